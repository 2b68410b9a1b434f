#!/usr/bin/env bash
# Snakemake post-deploy hook of rsgrpo-gpu.yaml (the GPU jobs): runs once inside the new environment.
# Always the `gpu` extra, wherever the environment is built: whether a GPU is visible on that machine
# (usually a login node without one) must not decide what the GPU jobs run with. RSGRPO_SOURCE: see
# rsgrpo.post-deploy.sh.
set -euo pipefail
src="${RSGRPO_SOURCE:?is set by the workflow (workflow/rules/common.smk) to the rsgrpo checkout}"
python -m pip install "$src[gpu]"
