#!/usr/bin/env bash
# Separate virtualenv for perf/bench_trl.py: TRL's GRPOTrainer beside (not inside) the
# project's .venv, so TRL's dependencies never change what pyproject.toml pins.
#
#   bash perf/setup_trl_venv.sh [VENV_DIR]      # default: .venv-trl in the repo root
#
# torch is installed first and on its own: torch==2.13.0 resolves to the CPU wheel where one is
# available, and having it in place keeps any later requirement from pulling a CUDA build of another
# torch version. TRL 1.16.0 declares no torch requirement of its own (accelerate's torch>=2.0 is met
# by 2.13.0) and accepts transformers>=4.56.2; transformers, tokenizers, accelerate, safetensors,
# huggingface_hub and numpy are pinned to the same versions as the main .venv so that the model
# code, tokenizer and sampling behave identically on both sides of the comparison. math-verify is
# there because both sides reward with rsgrpo.grading; our package goes in --no-deps (editable)
# only so that the TRL side can import rsgrpo.prepare / rsgrpo.grading / rsgrpo.train.engines.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-trl}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

test -x "$PY" || python3 -m venv "$VENV"
"${PIP[@]}" torch==2.13.0 setuptools==80.9.0 wheel==0.48.0
"${PIP[@]}" torch==2.13.0 \
    trl==1.16.0 \
    transformers==5.19.0 \
    tokenizers==0.23.3 \
    accelerate==1.15.0 \
    datasets==5.2.0 \
    safetensors==0.8.0 \
    huggingface_hub==2.4.0 \
    numpy==2.4.6 \
    pyarrow==26.0.1 \
    'math-verify[antlr4-13-2]==0.9.0'
"${PIP[@]}" --no-build-isolation --no-deps -e "$ROOT"
"$PY" - <<'PY'
import torch, transformers, trl, datasets, accelerate
print(f"TRL venv ready: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"trl {trl.__version__}, datasets {datasets.__version__}, accelerate {accelerate.__version__}")
PY
touch "$VENV/.installed-stamp"
