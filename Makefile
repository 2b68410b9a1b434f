# Two commands on a fresh machine (see README.md):
#   make demo   -- runs the main job on the embedded default (offline, 2 CPU cores)
#   make test   -- runs the test suite
# Both create .venv/ on first use and install exactly what pyproject.toml pins.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
CORES   ?= 2
# torch is pinned in pyproject.toml; install that exact version first so nothing (including the
# deepspeed source build, which imports torch) can pull a CUDA build of another version.
TORCH   := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# rules call `python -m rsgrpo`: make that the project's interpreter
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" setuptools==80.9.0 wheel==0.48.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) all

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results .snakemake
