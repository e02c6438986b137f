# Thin wrappers: each target is one command. `make boot` and `make test` set up
# everything themselves (Debian packages, .venv) on a fresh machine.
IMAGE ?= images/wvds.yaml
BOOT_ARGS ?= --est-ca
VENV := .venv/bin

.PHONY: setup boot test test-unit lint lint-report bench hil hil-boot clean fuzz reliability test-direct

setup:
	./bootstrap.sh

boot: setup
	$(VENV)/l4emu boot $(IMAGE) $(BOOT_ARGS)

# The suite includes the HIL smoke: the aarch64 guest is built from hil/qemu/lock.json and
# booted once (hello and a handful of attacks in it; tests/hil/test_smoke.py). Then the violation
# and system suites again with direct channels forced on every gate, and off everywhere (test-direct).
test: setup
	$(VENV)/l4emu hil build
	L4EMU_HIL_SMOKE=1 $(VENV)/python -m pytest
	$(MAKE) --no-print-directory test-direct

# The violation and system suites with kernel-granted direct channels forced on every gate, then off
# everywhere (docs/direct-channels.md); the first `make test` run takes them as each image says.
test-direct: setup
	L4EMU_DIRECT=1 $(VENV)/python -m pytest -q -p no:cacheprovider tests/capability_violations tests/system
	L4EMU_DIRECT=0 $(VENV)/python -m pytest -q -p no:cacheprovider tests/capability_violations tests/system

# The fast lane: every test that starts no process (no task, no QEMU, no server). tests/lanes.py
# decides which tests boot; in this lane any other test that tries to fails.
test-unit: setup
	L4EMU_UNIT_LANE=1 $(VENV)/python -m pytest -m "not boots"

# ruff (rules in pyproject.toml) and mypy (strict on capabilities/ and the kernel core); CI runs it
# before the tests. lint-report counts what is left per directory (never fails).
lint: setup
	$(VENV)/ruff check .; status=$$?; $(VENV)/mypy && exit $$status

lint-report: setup
	.ci/lint-report

# All HIL tests in the guest; the run record lands in hil/runs/<timestamp>-<pid>-pytest/.
hil: setup
	$(VENV)/l4emu hil build && $(VENV)/python -m pytest -m hil tests/hil/test_guest.py

hil-boot: setup
	$(VENV)/l4emu hil run $(IMAGE) $(BOOT_ARGS)

bench: setup
	$(VENV)/python tests/bench/run.py

# Chaos + durability + load (l4emu/reliability.py, docs/supervision.md): the server of
# images/reliability.yaml is killed at seeded points under load; prints a table, fails on any loss.
# Then every crash point of every durable write of both services (docs/durability.md).
RELIABILITY_ARGS ?= --seed 1 --faults 10 --clients 3 --requests 1000
reliability: setup
	$(VENV)/python -m l4emu.reliability $(RELIABILITY_ARGS)
	$(VENV)/python -m pytest -q -p no:cacheprovider tests/durable \
	  tests/tasks/crypto_service/test_crypto_durability.py tests/tasks/est_service/test_est_store.py

# Long fuzzing runs (make test runs the short ones): the hypothesis state machine with many more
# examples, then atheris on the frame decoder and the kernel's syscall entry, FUZZ_SECONDS each.
# Crashes land in var/fuzz/; copy them into tests/fuzz/crashers/ as regression tests.
FUZZ_SECONDS ?= 600
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	L4EMU_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/python -m pytest -q --timeout=0 tests/capability_violations/test_kernel_fuzz.py
	@if $(VENV)/python -c 'import atheris' 2>/dev/null; then \
	  mkdir -p var/fuzz/decode var/fuzz/kernel && cd var/fuzz && \
	  ../../$(VENV)/python ../../tests/fuzz/fuzz_kernel.py decode -max_total_time=$(FUZZ_SECONDS) decode && \
	  ../../$(VENV)/python ../../tests/fuzz/fuzz_kernel.py kernel -max_total_time=$(FUZZ_SECONDS) -max_len=2048 kernel; \
	else echo "fuzz: atheris is not installed (no wheel for this Python): skipped the coverage-guided run"; fi

clean:
	rm -rf .venv .pytest_cache var
