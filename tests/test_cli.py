"""The command line: verb listing, unknown verbs, one name per rule / verb / module, and the bandit
verb's files and figure."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rsgrpo.bandit import bandit as bandit_cli  # noqa: E402
from rsgrpo.bandit.simulation import BanditSpec, simulate  # noqa: E402
from rsgrpo.cli import VERBS, main, verb_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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
    for verb in VERBS:
        mod = importlib.import_module(verb_module(verb))
        assert callable(mod.add_arguments) and callable(mod.main), verb


def test_bandit_verb_writes_csv_and_png(tmp_path):
    assert main(["bandit", "--betas", "0", "8", "--seeds", "2", "--updates", "100", "--record-every", "10",
                 "--out", str(tmp_path)]) == 0
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


def _workflow_rules() -> dict[str, tuple[str, str]]:
    """Rule name -> (its rule file's stem, its text), for every rule of the Snakefile and workflow/rules/*.smk."""
    rules = {}
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            assert name not in rules, f"rule {name} defined twice"
            # its text runs up to the next top-level line
            rules[name] = (path.stem, re.split(r"^\S", body, maxsplit=1, flags=re.M)[0])
    return rules


def test_rule_names_are_the_verbs():
    """Rule name == verb with '-' -> '_'; every rule runs its own verb; a rule of workflow/rules/<stage>.smk
    runs a verb of stage <stage>, which lives in rsgrpo/<stage>/<rule>.py."""
    rules = _workflow_rules()
    assert "all" in rules
    assert sorted(r for r in rules if r != "all") == sorted(v.replace("-", "_") for v in VERBS)
    for rule, (stage, text) in rules.items():
        if rule == "all":
            continue
        verb = rule.replace("_", "-")
        assert re.findall(r"python -m rsgrpo ([\w-]+)", text) == [verb], rule
        assert VERBS[verb][0] == stage, f"rule {rule} is in {stage}.smk but its verb is of stage {VERBS[verb][0]}"
        assert (REPO / "rsgrpo" / stage / f"{rule}.py").is_file(), rule
        assert verb_module(verb) == f"rsgrpo.{stage}.{rule}"


def test_bandit_figure(tmp_path, monkeypatch):
    seen = []
    original = bandit_cli.save_figure

    def spy(fig, path, formats=None):
        seen.append(list(fig.axes))
        return original(fig, path, formats)

    monkeypatch.setattr(bandit_cli, "save_figure", spy)
    res = simulate([0.0, 8.0], 2, BanditSpec(updates=200, record_every=20))
    (path,) = bandit_cli.plot_bandit(res, tmp_path / "bandit.png")
    assert path.stat().st_size > 10_000
    (axes,) = seen
    assert len(axes) == 2
    assert [len(ax.get_lines()) for ax in axes] == [2 + 2, 2]  # reward panel also has the 1.0 / 0.6 guides
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), res.reward_ma[0].mean(axis=0))
