#!/usr/bin/env bash
# Runs once inside the freshly created conda environment (Snakemake post-deploy hook).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
torch_pin=$(grep -o '"torch==[^"]*"' "$repo/pyproject.toml" | tr -d '"')
python -m pip install "$torch_pin"
extras=""
if command -v nvidia-smi >/dev/null 2>&1; then extras="[gpu]"; fi  # vLLM rollouts on GPU nodes
python -m pip install "$repo$extras"
