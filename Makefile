# Two entry points: `make demo` (main job on the built-in synthetic corpus) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench-convergence bench-bccd bench-predict bench-serve bench-speed bench-upstream bench-real-data

$(STAMP): pyproject.toml requirements-ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q -e '.[dev]' -c requirements-ci.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unihema demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Benchmarks: run alone on the machine (see docs/benchmarks.md); not part of the test run.
bench-convergence: $(STAMP)
	$(PY) benchmarks/bench_convergence.py --recipes large_cells fast_encoder --tasks detection classification --seeds 0 1 2 --minutes 1 2 5 --write-doc docs/benchmarks.md

bench-bccd: $(STAMP)
	$(PY) benchmarks/bench_bccd.py --minutes 15 --write-doc docs/benchmarks.md

# Unified against single-dataset training and the peers on the ten staged real datasets (about 90 minutes).
bench-real-data: $(STAMP)
	$(PY) benchmarks/bench_real_data.py --minutes 24 --write-doc docs/benchmarks.md

bench-predict: $(STAMP)
	$(PY) benchmarks/bench_predict.py --write-doc docs/benchmarks.md

bench-serve: $(STAMP)
	$(PY) benchmarks/bench_serve.py --write-doc docs/benchmarks.md

# Training speed: throughput per task and preset, the step profile, the backbone's memory layout.
bench-speed: $(STAMP)
	$(PY) benchmarks/bench_training.py --presets tiny fast --det-sizes 128 416 --write-doc docs/benchmarks.md
	$(PY) benchmarks/bench_training_profile.py --presets tiny fast --size 416 544 --write-doc docs/benchmarks.md
	$(PY) benchmarks/bench_backbone_layout.py --write-doc docs/benchmarks.md
	$(PY) benchmarks/bench_deformable.py --write-doc docs/benchmarks.md
	$(PY) benchmarks/bench_image_cache.py --batch 8 --size 96 --write-doc docs/benchmarks.md
	$(PY) benchmarks/bench_image_cache.py --task classification --batch 16 --size 96 --write-doc docs/benchmarks.md

# Side by side with the authors' code: make bench-upstream UPSTREAM=path/to/a/Uni-Hema/checkout
bench-upstream: $(STAMP)
	$(PY) benchmarks/bench_upstream.py --upstream "$(UPSTREAM)" --write-doc docs/benchmarks.md

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf runs build dist .pytest_cache
