# The two commands a user needs are `make demo` and `make test`; everything
# else is a step they pull in.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
STAMP   := $(VENV)/.installed

.PHONY: all venv test test-unit lint bench soak demo clean

all: test

$(STAMP): pyproject.toml targetcli-ext/pyproject.toml
	python3 -m venv $(VENV) || { apt-get update && apt-get install -y python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install --upgrade pip >/dev/null
	$(VENV)/bin/pip install -e '.[test]'
	$(VENV)/bin/pip install -e ./targetcli-ext
	touch $(STAMP)

venv: $(STAMP)

# Every test tier that exists: engine unit, property and crash tests.
test: $(STAMP)
	$(PYTEST) -q tests

test-unit: $(STAMP)
	$(PYTEST) -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check appliance tests targetcli-ext
	$(VENV)/bin/ruff format --check appliance tests targetcli-ext

# Longer versions of the crash and property tests.
soak: $(STAMP)
	CDP_SOAK=1 $(PYTEST) -q -m soak tests

# Benchmarks: ratios against a reference measured in the same run, written
# to docs/PERFORMANCE.md.  BENCH_DIR should be on the disk you care about.
BENCH_DIR ?= $(CURDIR)/bench-work
bench: $(STAMP)
	$(PY) -m tests.bench.run --workdir $(BENCH_DIR) --out docs/PERFORMANCE.md

# Until the appliance image exists (issue: the appliance), the demo runs the
# engine on files: protect a volume, write, bookmark, rewind, read back.
demo: $(STAMP)
	$(PY) -m appliance.demo

clean:
	rm -rf $(VENV) bench-work .pytest_cache .hypothesis
