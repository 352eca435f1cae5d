# The README's commands. Only Python >= 3.11, make and a C compiler are assumed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test lint bench lock clean install config-docs

demo: $(STAMP)  ## run the main job on the embedded dataset
	$(PY) -m usp.cli run data/co2_weekly_mauna_loa.csv --config examples/co2_weekly.toml \
	    --out out/predictions.csv --plot out/report.png

test: $(STAMP)  ## lint, type-check src/ and run the whole test suite
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy
	$(PY) -m pytest -n 2 -q

bench: $(STAMP)  ## print the benchmark tables and write benchmarks/results/*.json
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_dispatch.py
	$(PY) benchmarks/bench_signature.py
	$(PY) benchmarks/bench_wtmm.py
	$(PY) benchmarks/bench_snapshot.py
	$(PY) benchmarks/bench_persistence.py

install: $(STAMP)

config-docs: $(STAMP)  ## regenerate config.toml and docs/configuration.md from the field metadata
	$(PY) -m usp.cli config defaults > config.toml
	{ cat docs/configuration.intro.md; $(PY) -m usp.cli config reference; } > docs/configuration.md

$(STAMP): requirements.lock pyproject.toml tools/lock.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/lock.py install
	$(PY) -m pip install --no-deps --no-build-isolation --disable-pip-version-check -e .
	$(PY) tools/lock.py verify
	@touch $(STAMP)

lock:  ## re-resolve requirements.in into requirements.lock
	rm -rf /tmp/usp-lock-venv && $(PYTHON) -m venv /tmp/usp-lock-venv
	/tmp/usp-lock-venv/bin/pip install -U setuptools wheel numpy
	/tmp/usp-lock-venv/bin/pip install --no-build-isolation -r requirements.in
	/tmp/usp-lock-venv/bin/python tools/lock.py freeze

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache .ruff_cache
