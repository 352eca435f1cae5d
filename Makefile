# The README's commands. Only Python >= 3.11, make and a C compiler are assumed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test lint bench lock clean install config-docs

demo: $(STAMP)  ## run the main job on the embedded dataset
	$(PY) -m usp.cli run data/co2_weekly_mauna_loa.csv --config examples/co2_weekly.toml \
	    --out out/predictions.csv --plot out/report.png

test: $(STAMP)  ## lint, type-check src/ and run the whole test suite
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/mypy
	$(PY) -m pytest -n 2 -q

bench: $(BENCH_STAMP)  ## add the benchmark-only group, print the benchmark tables, write benchmarks/results/*.json
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_dispatch.py
	$(PY) benchmarks/bench_signature.py
	$(PY) benchmarks/bench_wtmm.py
	$(PY) benchmarks/bench_snapshot.py
	$(PY) benchmarks/bench_persistence.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/bench_kernel_c.py
	$(PY) benchmarks/bench_kernel_b.py
	$(PY) benchmarks/bench_cluster.py
	$(PY) benchmarks/bench_tuning.py
	$(PY) benchmarks/bench_change_detection.py
	$(PY) benchmarks/bench_accuracy.py

install: $(STAMP)

config-docs: $(STAMP)  ## regenerate config.toml and docs/configuration.md from the field metadata
	$(PY) -m usp.cli config defaults > config.toml
	{ cat docs/configuration.intro.md; $(PY) -m usp.cli config reference; } > docs/configuration.md

$(STAMP): requirements.lock pyproject.toml tools/lock.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) tools/lock.py install $(if $(wildcard $(BENCH_STAMP)),--group bench)
	$(PY) -m pip install --no-deps --no-build-isolation --disable-pip-version-check -e .
	$(PY) tools/lock.py verify
	@touch $(STAMP)

# The benchmark-only group of the lock (peer forecasters and packaged datasets), on top of the
# core pins; once installed, a reinstall of the core keeps it at its pinned versions.
$(BENCH_STAMP): $(STAMP) requirements.lock tools/lock.py
	$(PY) tools/lock.py install --group bench
	$(PY) tools/lock.py verify --group bench
	@touch $(BENCH_STAMP)

lock:  ## re-resolve requirements.in into requirements.lock: the core pins, then the bench group on top
	rm -rf /tmp/usp-lock-venv && $(PYTHON) -m venv /tmp/usp-lock-venv
	/tmp/usp-lock-venv/bin/pip install -U setuptools wheel numpy
	$(PYTHON) tools/lock.py requirements core > /tmp/usp-lock-core.txt
	/tmp/usp-lock-venv/bin/pip install --no-build-isolation -r /tmp/usp-lock-core.txt
	/tmp/usp-lock-venv/bin/python tools/lock.py freeze
	/tmp/usp-lock-venv/bin/python tools/lock.py pins core > /tmp/usp-lock-constraints.txt
	$(PYTHON) tools/lock.py requirements bench > /tmp/usp-lock-bench.txt
	/tmp/usp-lock-venv/bin/pip install --no-build-isolation -c /tmp/usp-lock-constraints.txt -r /tmp/usp-lock-bench.txt
	/tmp/usp-lock-venv/bin/python tools/lock.py freeze --group bench

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache .ruff_cache
