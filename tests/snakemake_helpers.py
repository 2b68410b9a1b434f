"""Run Snakemake on a copy of the workflow, as a user's clone would, and read its job counts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# snakemake under the preload server, as `make demo` runs it: the workflow's `python -m rsgrpo` jobs are
# forked from a process that imported their libraries once (rsgrpo/preload.py)
PRELOADED = [sys.executable, "-m", "rsgrpo.preload", "--", str(BIN / "snakemake")]


def copy_workflow(dest: Path) -> Path:
    """Copy Snakefile, workflow/, config/ and profiles/ into ``dest`` (outputs then land there)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    for folder in ("workflow", "config", "profiles"):
        shutil.copytree(REPO / folder, dest / folder, dirs_exist_ok=True)
    return dest


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None,
              program: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the venv's snakemake (or ``program``, a command line that runs it) in ``workdir``; rules
    find the venv's python first on PATH."""
    base = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    env = {**base, **(env or {})}
    return subprocess.run(
        [*(program or [str(BIN / "snakemake")]), *args], cwd=workdir, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry) run into {rule: count} (without the total)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts: dict[str, int] = {}
    for line in lines[start + 3 :]:  # skip the title, the header and the dashes
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run_resources(output: str) -> dict[str, dict[str, int | str]]:
    """``{rule: {resource: value}}`` from the job blocks of a dry run's output (the last
    job of each rule); whole numbers as ints."""
    blocks = re.split(r"^rule (\w+):$", output, flags=re.M)[1:]
    return {rule: {k: int(v) if v.isdigit() else v
                   for k, v in re.findall(r"(\w+)=([^,\s]+)", block.split("resources:")[1].splitlines()[0])}
            for rule, block in zip(blocks[::2], blocks[1::2]) if "resources:" in block}
