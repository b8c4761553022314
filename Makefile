# The two commands a user needs are `make demo` and `make test`; everything
# else is a step they pull in.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
STAMP   := $(VENV)/.installed

.PHONY: all venv test test-fast test-vm test-unit lint bench bench-vm conformance soak image demo demo-stop clean

all: test

$(STAMP): pyproject.toml targetcli-ext/pyproject.toml
	python3 -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e '.[test]'
	$(VENV)/bin/pip install -e ./targetcli-ext
	touch $(STAMP)

venv: $(STAMP)

# Every test tier: the fast one (engine unit, property and crash tests, the
# SCSI layer against the simulated ring, control API, shell), then the VM
# tier (real LIO in qemu VMs under TCG: the handler with iscsi-test-cu,
# durability under SIGKILL and power cuts, the appliance image and the admin's
# story).  The VM tier needs root; it builds the cached base and appliance
# images on first use (~/.cache/cdp-appliance, keyed by their inputs).
test: test-fast test-vm

test-fast: $(STAMP)
	$(PYTEST) -q tests/unit tests/durability

# The VM tier CI runs (about an hour on an idle 2-core machine under TCG).
# tests/vm/test_durability_vm.py (SIGKILL under fio verify, ring pressure,
# bad CDBs, ghost writes: 30+ min) and test_vm_smoke.py run with
# `make test-vm VM_TESTS=tests/vm` and in `make soak`.
# libiscsi's iscsi-test-cu (test_handler.py::test_iscsi_test_cu_scsi_family: 25
# min for user:cdp beside one other VM, over 90 min on a loaded machine) runs in
# `make conformance` and soak.
VM_TESTS ?= tests/vm/test_appliance.py tests/vm/test_story.py tests/vm/test_handler.py \
	tests/vm/test_powercut.py
VM_SELECT ?= not iscsi_test_cu
test-vm: $(STAMP)
	CDP_VM_TESTS=1 CDP_KEEP_BASES=4 $(PYTEST) -q -rs -m vm -k "$(VM_SELECT)" $(VM_TESTS)

# iscsi-test-cu --test=SCSI --dataloss against LIO fileio and user:cdp in one VM;
# passed, skipped and failed counted apart into docs/CONFORMANCE.md.
conformance: $(STAMP)
	CDP_KEEP_BASES=4 $(PY) -m tests.vm.conformance run

test-unit: $(STAMP)
	$(PYTEST) -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check appliance tests targetcli-ext
	$(VENV)/bin/ruff format --check appliance tests targetcli-ext

# Longer versions of the crash and property tests.
soak: $(STAMP)
	CDP_SOAK=1 $(PYTEST) -q -m soak tests
	CDP_SOAK=1 CDP_VM_TESTS=1 CDP_KEEP_BASES=4 $(PYTEST) -q -rs -m vm \
		tests/vm/test_durability_vm.py tests/vm/test_powercut.py \
		tests/vm/test_handler.py::test_iscsi_test_cu_scsi_family

# fio through open-iscsi in the VM: user:cdp vs kernel fileio vs tcmu-runner.
bench-vm: $(STAMP)
	CDP_KEEP_BASES=10 $(PY) -m tests.bench.fio_vm --out docs/PERFORMANCE.md

# Benchmarks: ratios against a reference measured in the same run, written
# to docs/PERFORMANCE.md.  BENCH_DIR should be on the disk you care about.
BENCH_DIR ?= $(CURDIR)/bench-work
bench: $(STAMP)
	$(PY) -m tests.bench.run --workdir $(BENCH_DIR) --out docs/PERFORMANCE.md

# The appliance image (Packer + Ansible on the cached Debian base), cached in
# ~/.cache/cdp-appliance/image-<hash>; a second run with nothing changed does
# nothing.  images/latest links to it.
image:
	images/build-image.sh

# A running appliance on 127.0.0.1 (iSCSI 3260, SSH 2222) with a demo protected
# LUN; prints the portal, IQN, CHAP credentials and login commands, and writes
# them to .demo/connection.env.  `make demo-stop` powers it off.
demo:
	python3 images/demo.py start

demo-stop:
	python3 images/demo.py stop

clean:
	rm -rf $(VENV) bench-work .pytest_cache .hypothesis
