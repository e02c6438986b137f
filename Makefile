# Thin wrappers: each target is one command. `make boot` and `make test` set up
# everything themselves (Debian packages, .venv) on a fresh machine.
IMAGE ?= images/wvds.yaml
BOOT_ARGS ?= --est-ca 127.0.0.1:8443
VENV := .venv/bin

.PHONY: setup boot test bench hil hil-boot clean

setup:
	./bootstrap.sh

boot: setup
	$(VENV)/l4emu boot $(IMAGE) $(BOOT_ARGS)

# The suite includes the HIL smoke: the aarch64 guest is built from hil/qemu/lock.json and
# booted once (hello and a handful of attacks in it; tests/hil/test_smoke.py).
test: setup
	$(VENV)/l4emu hil build
	L4EMU_HIL_SMOKE=1 $(VENV)/python -m pytest

# All HIL tests in the guest; the run record lands in hil/runs/<timestamp>-<pid>-pytest/.
hil: setup
	$(VENV)/l4emu hil build && $(VENV)/python -m pytest -m hil tests/hil/test_guest.py

hil-boot: setup
	$(VENV)/l4emu hil run $(IMAGE) $(BOOT_ARGS)

bench: setup
	$(VENV)/python tests/bench/run.py

clean:
	rm -rf .venv .pytest_cache var
