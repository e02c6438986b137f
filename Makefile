# Thin wrappers: each target is one command. `make boot` and `make test` set up
# everything themselves (Debian packages, .venv) on a fresh machine.
IMAGE ?= images/wvds.yaml
BOOT_ARGS ?= --est-ca 127.0.0.1:8443
VENV := .venv/bin

.PHONY: setup boot test bench lint clean

setup:
	./bootstrap.sh

boot: setup
	$(VENV)/l4emu boot $(IMAGE) $(BOOT_ARGS)

test: setup
	$(VENV)/python -m pytest

bench: setup
	$(VENV)/python tests/bench/run.py

clean:
	rm -rf .venv .pytest_cache var
