# Thin wrappers: each target is one command. `make boot` and `make test` set up
# everything themselves (Debian packages, .venv) on a fresh machine.
IMAGE ?= images/wvds.yaml
BOOT_ARGS ?= --est-ca
VENV := .venv/bin

.PHONY: setup boot test bench hil hil-boot clean

setup:
	./bootstrap.sh

boot: setup
	$(VENV)/l4emu boot $(IMAGE) $(BOOT_ARGS)

test: setup
	$(VENV)/python -m pytest

hil: setup
	./hil/qemu/setup.sh && $(VENV)/l4emu hil build && $(VENV)/python -m pytest -m hil tests/hil/test_qemu.py

hil-boot: setup
	./hil/qemu/setup.sh && $(VENV)/l4emu hil run $(IMAGE) $(BOOT_ARGS)

bench: setup
	$(VENV)/python tests/bench/run.py

clean:
	rm -rf .venv .pytest_cache var
