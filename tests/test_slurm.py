"""A real SLURM run: the tiny config through `--profile profiles/slurm` on a one-node cluster.

The fixture installs slurm-wlm and munge from Debian when they are missing (CI runs as root on a
fresh machine), starts munged, slurmctld and slurmd (tests/slurm/cluster.sh), and stops them
afterwards. The node declares 64 CPUs and ~1 TB so the shipped profile's resources schedule
unchanged. Test-only overrides: `--slurm-status-command squeue` (no accounting daemon) and a first
`python` on PATH that makes the first training job fail once, to show that the profile's retries
resubmit it and the workflow completes.
"""

import os
import shutil
import subprocess
import sys

import pytest
from snakemake_helpers import REPO, copy_workflow, snakemake, write_config
from test_workflow import TINY, check_results

CLUSTER = REPO / "tests/slurm/cluster.sh"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("slurm-wlm/munge not installed and not root: cannot install them here")
        subprocess.run(["bash", str(CLUSTER), "install"], check=True)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state), "64", "1000000"],
                             capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield state
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=False)


def test_tiny_config_on_slurm_with_one_injected_failure(slurm_cluster, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    cfg = dict(TINY, sweeps=[{"models": ["tiny"], "methods": ["base", "grpo", "rs_grpo"], "betas": [2, 4],
                              "eval_steps": [1, "final"]}])
    config = write_config(tmp_path / "slurm.yaml", cfg)
    marker = tmp_path / "train-failed-once"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text(  # fails the first `python -m rsgrpo train`, then steps aside
        "#!/usr/bin/env bash\n"
        f'if [ "$1 $2 $3" = "-m rsgrpo train" ] && mkdir "{marker}" 2>/dev/null; then\n'
        '  echo "injected failure" >&2; exit 1\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    (fake_bin / "python").chmod(0o755)
    env = {
        "SLURM_CONF": str(slurm_cluster / "slurm.conf"),
        "RSGRPO_SLURM_PARTITION": "debug",
        "PATH": f"{fake_bin}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    }
    out = snakemake(
        wf, "--profile", "profiles/slurm", "--configfile", str(config),
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1", "-j", "8",
        env=env, timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert marker.exists(), "the injected failure never fired"
    check_results(wf)
    # one training job failed and was resubmitted: that cell has two SLURM job logs
    train_logs = sorted((wf / "logs/slurm/rule_train").rglob("*.log"))
    assert len(train_logs) == 3 + 1, [p.name for p in train_logs]
    # every non-local job really went through sbatch
    for rule in ("sample", "score", "aggregate", "figures", "bandit"):
        assert list((wf / f"logs/slurm/rule_{rule}").rglob("*.log")), rule
