"""scripts/gpu_check.py runs end to end on CPU (transformers engine): its plumbing, not GPU figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_and_reports_every_figure(tiny_model_dir, tmp_path):
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--model", str(tiny_model_dir),
                           "--prompts", "4", "--samples", "2", "--max-new", "8", "--steps", "1", "--micro", "4",
                           "--ranks", "1,2", "--json", str(out)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "no GPU (CPU)" and report["engine"] == "hf"
    assert report["rollout"]["tokens"] > 0 and report["rollout"]["ours_tokens_per_s"] > 0
    (train,) = report["train"]  # 2 ranks need 2 GPUs: skipped, and said so
    assert "2 ranks skipped" in proc.stdout
    assert train["ranks"] == 1 and train["train_tokens_per_s"] > 0 and train["refresh_s"] >= 0
    assert train["predicted_gb"] > 0 and math.isnan(train["mfu"]) and math.isnan(train["peak_gpu_gb"])
    assert "| ranks | zero_stage | train_tokens_per_s" in proc.stdout and "rollout: ours" in proc.stdout
