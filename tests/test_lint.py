"""Style checks that belong to the suite (also `make lint`): ruff on the Python code, snakefmt on the workflow."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    """rsgrpo/, tests/, perf/ and scripts/ pass the pinned ruff with the settings of pyproject.toml."""
    out = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_snakefmt_is_clean():
    """Snakefile and workflow/ are formatted by the pinned snakefmt (settings: pyproject.toml [tool.snakefmt])."""
    out = subprocess.run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
