"""A module run by tests/test_preload.py inside preload workers: ``python -m preload_target MODE OUT``.

It writes what it sees (argv, working directory, environment, torch's thread count, its first draws
from torch's, NumPy's and Python's global generators) to ``OUT`` as JSON, then acts out ``MODE``.
"""

import json
import os
import random
import signal
import sys
import time

import numpy as np
import torch

mode, out = sys.argv[1], sys.argv[2]
seen = {"argv": sys.argv, "cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(),
        "pgid": os.getpgid(0), "threads": torch.get_num_threads(), "torch_draw": torch.rand(3).tolist(),
        "numpy_draw": np.random.random_sample(), "python_draw": random.random(),
        "marker": os.environ.get("PRELOAD_TEST_MARKER"), "socket": os.environ.get("RSGRPO_PRELOAD_SOCKET"),
        "sigint": str(signal.getsignal(signal.SIGINT)), "sigterm": str(signal.getsignal(signal.SIGTERM))}
with open(out, "w") as fh:
    json.dump(seen, fh)
print(f"stdout of {mode}")
print(f"stderr of {mode}", file=sys.stderr)
if mode == "exit":
    sys.exit(int(sys.argv[3]))
if mode == "raise":
    raise ValueError("a failing verb")
if mode == "die":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "wait-for-term":  # like a train job: a stop signal makes it write down where it was
    def stop(signum, _frame):
        with open(out + ".stopped", "w") as fh:
            fh.write(signal.Signals(signum).name)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, stop)
    with open(out + ".waiting", "w"):
        pass
    time.sleep(120)
    sys.exit(7)
