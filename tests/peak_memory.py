"""Peak memory of a computation on CPU, measured in a fresh Python process.

``peak_mb(setup, work)`` runs ``setup`` (code that builds inputs), then ``work``, in a subprocess and
returns how far the process's peak resident set rose above its resident set after ``setup``: the
memory ``work`` needed at its peak. The peak is ``VmHWM``, reset after ``setup`` (setup's own transient
peak must not count: on some runs it was larger than the work's), less the file-backed pages ``work`` mapped in
(the code of library functions it is the first to call). A fresh process per measurement keeps the
allocator's cached blocks of one measurement out of the next, and a fixed glibc mmap threshold
(64 KiB) makes every sizeable tensor its own mapping, returned to the system when freed: with
glibc's default, adaptive threshold freed blocks stay in the heap and the resident set counts
memory that is no longer in use, which made the figures drift between runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_TEMPLATE = """
import os
os.environ["OMP_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
{setup}
def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to now: setup's own transient peak must not count
before, file_before = _status_kb("VmRSS"), _status_kb("RssFile")
{work}
peak = _status_kb("VmHWM")
file_growth = max(0, _status_kb("RssFile") - file_before)  # library code first run by work: not data
print("PEAK_MB", (peak - before - file_growth) / 1024)
"""


def measured_output(setup: str, work: str, timeout: int = 600, env: dict | None = None) -> str:
    """Standard output of ``setup`` then ``work`` in a fresh process; its ``PEAK_MB`` line is the peak
    (see the module docstring), the other lines are whatever ``setup`` and ``work`` print."""
    code = _TEMPLATE.format(setup=textwrap.dedent(setup), work=textwrap.dedent(work))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
                              "MALLOC_MMAP_THRESHOLD_": "65536", **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def peak_mb(setup: str, work: str, timeout: int = 600) -> float:
    stdout = measured_output(setup, work, timeout)
    line = next(line for line in stdout.splitlines() if line.startswith("PEAK_MB"))
    return float(line.split()[1])


# One micro-batch of the update at a paper-like shape (B 4, L 2048, a 32k vocabulary; a 2-layer model,
# so the logits dominate): forward and backward of the naive log-probs and of the trainer's chunked ones.
LOGPROB_WORKLOAD = """
from transformers import Qwen2Config, Qwen2ForCausalLM
from rsgrpo.train.loss import build_batch, naive_token_logprobs, token_logprobs
torch.manual_seed(0)
config = Qwen2Config(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096)
model = Qwen2ForCausalLM(config)
gen = torch.Generator().manual_seed(0)
pairs = [(torch.randint(1, 32000, (48,), generator=gen).tolist(),
          torch.randint(1, 32000, (2000,), generator=gen).tolist()) for _ in range(4)]
batch = build_batch(pairs, pad_id=0)
mask = batch.completion_mask[:, 1:]
"""


def logprob_peaks_mb() -> tuple[float, float]:
    """Peak memory (MB) of :data:`LOGPROB_WORKLOAD`: (naive, chunked in 1024-token chunks)."""
    naive = peak_mb(LOGPROB_WORKLOAD, """
logp, entropy = naive_token_logprobs(model, batch, with_entropy=True)
(logp * mask).sum().backward()
""")
    chunked = peak_mb(LOGPROB_WORKLOAD, """
logp, entropy = token_logprobs(model, batch, with_entropy=True, chunk_tokens=1024)
(logp * mask).sum().backward()
""")
    return naive, chunked
