"""The Snakemake workflow: lint, DAG shape, config validation, and a real run on a tiny config."""

import re

import pandas as pd
import pytest

from snakemake_helpers import REPO, copy_workflow, job_counts, snakemake, write_config

TINY = {
    "bandit": {"betas": [0, 8], "seeds": 2, "updates": 200, "record_every": 20},
    "figures": {"advantage_betas": [0, 2]},
}


def test_lint_is_clean():
    out = snakemake(REPO, "--lint")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Congratulations, your workflow is in a good condition!" in out.stdout + out.stderr


@pytest.mark.parametrize("configfile", ["config/grid.yaml", "config/demo.yaml"])
def test_dry_run_job_counts(tmp_path, configfile):
    wf = copy_workflow(tmp_path)
    out = snakemake(wf, "-n", "--configfile", configfile)
    assert out.returncode == 0, out.stderr
    assert job_counts(out.stdout + out.stderr) == {"all": 1, "bandit": 1, "plot_advantages": 1}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"bandit": {"betas": [-1]}}, "-1 is less than the minimum of 0"),
        ({"bandit": {"seeds": 0}}, "0 is less than the minimum of 1"),
        ({"bandit": {"betaz": [1]}}, "Additional properties are not allowed \\('betaz' was unexpected\\)"),
        ({"bandits": {}}, "'bandits' was unexpected"),
        ({"figures": {"advantage_betas": "2"}}, "'2' is not of type 'array'"),
    ],
)
def test_bad_config_rejected_before_any_job(tmp_path, config, message):
    wf = copy_workflow(tmp_path)
    cfg = write_config(tmp_path / "bad.yaml", config)
    out = snakemake(wf, "-n", "--configfile", str(cfg))
    assert out.returncode != 0
    assert re.search(message, out.stdout + out.stderr), out.stdout + out.stderr


def test_real_run_on_tiny_config(tmp_path):
    wf = copy_workflow(tmp_path)
    cfg = write_config(tmp_path / "tiny.yaml", TINY)
    out = snakemake(wf, "--profile", "profiles/local", "--cores", "2", "--configfile", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    df = pd.read_csv(wf / "results/bandit/bandit.csv")
    assert sorted(df.beta.unique()) == [0.0, 8.0] and len(df) == 2 * 2 * 10
    for name in ("results/bandit/bandit.png", "results/figures/advantages.png", "results/figures/advantages.pdf"):
        assert (wf / name).stat().st_size > 10_000, name
    assert "simulated in" in (wf / "logs/bandit.log").read_text()
    # nothing left to do afterwards
    again = snakemake(wf, "-n", "--configfile", str(cfg))
    assert "Nothing to be done" in again.stdout + again.stderr
