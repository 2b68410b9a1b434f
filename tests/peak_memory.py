"""Peak memory of a computation on CPU, measured in a fresh Python process.

``peak_mb(setup, work)`` runs ``setup`` (code that builds inputs), then ``work``, in a subprocess and
returns how far the process's peak resident set (``ru_maxrss``) rose above its resident set after
``setup``: the memory ``work`` needed at its peak. A fresh process per measurement keeps the
allocator's cached blocks of one measurement out of the next.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_TEMPLATE = """
import os, resource
os.environ["OMP_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
{setup}
def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
before = _rss_kb()
{work}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("PEAK_MB", (peak - before) / 1024)
"""


def peak_mb(setup: str, work: str, timeout: int = 600) -> float:
    code = _TEMPLATE.format(setup=textwrap.dedent(setup), work=textwrap.dedent(work))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(line for line in out.stdout.splitlines() if line.startswith("PEAK_MB"))
    return float(line.split()[1])
