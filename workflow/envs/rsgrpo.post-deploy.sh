#!/usr/bin/env bash
# Snakemake post-deploy hook of rsgrpo.yaml (the CPU rules): runs once inside the new environment.
# Snakemake runs a copy of this file from its conda prefix, so the checkout to install comes from
# RSGRPO_SOURCE, which the workflow sets to the directory of its Snakefile.
set -euo pipefail
src="${RSGRPO_SOURCE:?is set by the workflow (workflow/rules/common.smk) to the rsgrpo checkout}"
torch_pin=$(grep -o '"torch==[^"]*"' "$src/pyproject.toml" | tr -d '"')
# The CPU build of torch (the default Linux wheel carries several GB of CUDA libraries); it
# satisfies the project's torch==X pin (a local version label such as +cpu matches ==X).
python -m pip install "$torch_pin" --index-url https://download.pytorch.org/whl/cpu
python -m pip install "$src"
