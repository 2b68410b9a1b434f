"""The command line: verb listing, unknown verbs, and the bandit verb's files."""

import subprocess
import sys

import pandas as pd
import pytest

from rsgrpo.cli import VERBS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rsgrpo", *args], capture_output=True, text=True)


def test_help_lists_every_verb():
    out = run_cli("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


def test_unknown_verb_fails_with_usage():
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "unknown verb 'frobnicate'" in out.stderr and "bandit" in out.stderr


def test_every_verb_module_has_the_interface():
    import importlib

    for verb, (module, _) in VERBS.items():
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.main), verb


def test_bandit_verb_writes_csv_and_png(tmp_path):
    assert main(["bandit", "--betas", "0", "8", "--seeds", "2", "--updates", "100", "--record-every", "10", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "bandit.csv")
    assert list(df.columns) == ["beta", "seed", "samples", "reward_ma", "entropy"]
    assert len(df) == 2 * 2 * 10
    assert sorted(df.beta.unique()) == [0.0, 8.0] and sorted(df.seed.unique()) == [0, 1]
    assert df.samples.max() == 1600
    assert (tmp_path / "bandit.png").stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_plot_advantages_rejects_negative_beta(tmp_path):
    with pytest.raises(SystemExit, match="must be >= 0"):
        main(["plot-advantages", "--betas", "-1", "--out", str(tmp_path)])
