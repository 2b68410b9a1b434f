"""Real SLURM runs on a two-node cluster on this machine: the workflow through `--profile profiles/slurm`.

The fixture installs slurm-wlm and munge from Debian when they are missing (CI runs as root on a
fresh machine) and starts munged, slurmctld and two slurmd daemons, nodes n1 and n2
(tests/slurm/cluster.sh), stopping them afterwards. Each node declares 64 CPUs and ~1 TB so the
shipped profile's resources schedule unchanged. Test-only overrides: `--slurm-status-command squeue`
(no accounting daemon), and a sitecustomize on PYTHONPATH that registers a reward a random tiny model
earns, so training moves the weights.

- The tiny grid with its model set to `nodes: 2` and one rank per node: one launcher per node joins
  the rendezvous, and every trained cell ends on the weights of a one-node two-rank run.
- Faults on a longer run of one cell (12 steps, periodic checkpoints every 3), each ending on the
  uninterrupted run's weights and metrics: SIGKILL of the rank on n2 (the launch fails, the
  profile's retry resumes from the last checkpoint); the profile's warning signal mid-run (a stop
  checkpoint newer than the periodic one, no step lost); n2 drained before and during the job (it
  waits with SLURM's reason, then runs; a running job finishes).
Timings are printed (`pytest -s`) and bounded by the assertions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from snakemake_helpers import PRELOADED, REPO, copy_workflow, dry_run_resources, snakemake, write_config
from test_workflow import TINY, check_results
from train_helpers import assert_rows_close, metrics

CLUSTER = REPO / "tests/slurm/cluster.sh"
STEPS, CHECKPOINT_EVERY = 12, 3  # the fault runs; the faults come after step 4, well before the end
PROFILE_TRAIN = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())["set-resources"]["train"]
SIGNAL = re.search(r"--signal=(\w+)@", PROFILE_TRAIN["slurm_extra"]).group(1)  # the profile's warning signal


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip("slurm-wlm/munge not installed and not root: cannot install them here")
        subprocess.run(["bash", str(CLUSTER), "install"], check=True)
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state), "64", "1000000", "2"],
                             capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield state
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=False)


def _config(path: Path, nodes: int, ranks_per_node: int, **training) -> Path:
    """The tiny config on ``nodes`` x ``ranks_per_node`` ranks, trained on ``has_digit`` (conftest),
    every cell evaluated at its final step only; with ``training`` overrides, the fault cell alone."""
    model = dict(TINY["models"]["tiny"], nodes=nodes, cpu_processes=ranks_per_node)
    sweep = {"models": ["tiny"], "methods": ["grpo"]} if training else dict(TINY["sweeps"][0], eval_steps=["final"])
    return write_config(path, dict(TINY, models={"tiny": model}, sweeps=[sweep],
                                   training=dict(TINY["training"], reward_kind="has_digit", **training)))


def _env(test_rewards: Path, cluster: Path | None = None) -> dict:
    env = {"PYTHONPATH": f"{test_rewards}{os.pathsep}{REPO}", "OMP_NUM_THREADS": "1"}
    if cluster is not None:
        env.update(SLURM_CONF=str(cluster / "slurm.conf"), RSGRPO_SLURM_PARTITION="debug")
    return env


SLURM_ARGS = ("--profile", "profiles/slurm", "--slurm-status-command", "squeue",
              "--slurm-init-seconds-before-status-checks", "1", "-j", "8")
# snakemake with the plugin polling every second instead of backing off to minutes (see the script)
SLURM_SNAKEMAKE = [sys.executable, str(REPO / "tests/slurm/snakemake_polling_every_second.py")]


def _local_run(tmp_path: Path, test_rewards: Path, targets: list[str], **training) -> Path:
    """A one-node reference: ``targets`` of the config trained by 2 ranks on this machine."""
    wf = copy_workflow(tmp_path)
    config = _config(tmp_path / "local.yaml", nodes=1, ranks_per_node=2, **training)
    out = snakemake(wf, "--profile", "profiles/local", "--cores", "2", *targets, "--configfile", str(config),
                    env=_env(test_rewards), program=PRELOADED)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return wf


def _final(wf: Path, cell: str, step: int) -> tuple[dict, list[dict]]:
    run = wf / "runs" / cell
    return load_file(run / f"checkpoints/step-{step:06d}/model.safetensors"), metrics(run)


def _assert_same_training(wf: Path, ref: Path, cell: str, step: int) -> float:
    """Weights and metrics of ``cell`` in ``wf`` equal the reference's to the multi-rank tolerance;
    return the largest weight difference."""
    (w, rows), (w_ref, ref_rows) = _final(wf, cell, step), _final(ref, cell, step)
    assert_rows_close(ref_rows, rows, rel=1e-4)
    assert set(w) == set(w_ref)
    for k in w_ref:
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=2e-5)
    initial = load_file(wf / "models/tiny/model.safetensors")
    assert any(not torch.equal(w[k], initial[k]) for k in initial if k in w), "no update: the comparison proves nothing"
    return max(float((w[k] - w_ref[k]).abs().max()) for k in w_ref)


@pytest.mark.slow
def test_tiny_grid_on_two_nodes_equals_one_node(slurm_cluster, test_rewards, tiny_local_run, tmp_path):
    """Every non-local job goes through sbatch; each train job is one launcher on n1 and one on n2
    (their ranks' log lines name the node), and its weights equal those of the tiny config's local
    run (conftest), two ranks on one node."""
    wf = copy_workflow(tmp_path / "wf")
    config = _config(tmp_path / "slurm.yaml", nodes=2, ranks_per_node=1)
    started = time.monotonic()
    out = snakemake(wf, *SLURM_ARGS, "--configfile", str(config), env=_env(test_rewards, slurm_cluster),
                    timeout=1200, program=SLURM_SNAKEMAKE)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    check_results(wf)
    for rule in ("train", "sample", "score", "aggregate", "figures", "bandit"):
        assert list((wf / f"logs/slurm/rule_{rule}").rglob("*.log")), rule
    cells = ["tiny/grpo", "tiny/beta2", "tiny/beta4"]
    ref = tiny_local_run[0]
    steps = TINY["training"]["steps"]
    for cell in cells:
        log = (wf / "runs" / cell / "train.log").read_text()
        assert "--nnodes 2 --rdzv-backend c10d" in log
        attempts = re.split(r"^(?=== .* train job on )", log, flags=re.M)[1:] or [log]
        # one attempt: a retry means the first failed (its tail says why)
        assert len(attempts) == 1, f"{cell}: {len(attempts)} attempts; the first ended:\n{attempts[0][-3000:]}"
        assert sorted(re.findall(r"rank (\d) of 2 on node (n\d)", log)) in (
            [("0", "n1"), ("1", "n2")], [("0", "n2"), ("1", "n1")]), log[-3000:]
        diff = _assert_same_training(wf, ref, cell, steps)
        print(f"{cell}: 2 nodes x 1 rank vs 1 node x 2 ranks: max |dw| = {diff:.2e}")
    print(f"tiny grid through SLURM on 2 nodes: {took:.0f} s")


@pytest.fixture(scope="module")
def fault_reference(tmp_path_factory, test_rewards):
    """The fault cell trained without interruption (one node, two ranks)."""
    return _local_run(tmp_path_factory.mktemp("fault-ref"), test_rewards, ["results/tiny/grpo/manifest.json"],
                      steps=STEPS, checkpoint_every=CHECKPOINT_EVERY)


def _squeue(*args: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]


def _node_state(node: str) -> str:
    """sinfo's short state of ``node`` (``mix``, ``drng`` while draining with jobs, ``drain`` after)."""
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%t"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _scontrol(*args: str) -> None:
    subprocess.run(["scontrol", *args], check=True)


def _rank_pid(node: str) -> int:
    """The process id of the rank that runs on SLURM node ``node``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if env.get(b"SLURMD_NODENAME") == node.encode() and b"LOCAL_RANK" in env and b"TORCHELASTIC_RUN_ID" in env:
            found.append(int(pid))
    assert len(found) == 1, found
    return found[0]


class FaultRun:
    """The fault cell (STEPS steps, a checkpoint every CHECKPOINT_EVERY) through the SLURM profile on
    two nodes, in the background, with what a test needs to time a fault and its recovery."""

    def __init__(self, tmp_path: Path, test_rewards: Path, cluster: Path):
        self.wf = copy_workflow(tmp_path / "wf")
        config = _config(tmp_path / "fault.yaml", nodes=2, ranks_per_node=1, steps=STEPS,
                         checkpoint_every=CHECKPOINT_EVERY)
        self.run_dir = self.wf / "runs/tiny/grpo"
        self.output = tmp_path / "snakemake.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **_env(test_rewards, cluster),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        with self.output.open("w") as sink:
            self.proc = subprocess.Popen(
                [*SLURM_SNAKEMAKE, *SLURM_ARGS, "results/tiny/grpo/manifest.json",
                 "--configfile", str(config)], cwd=self.wf, env=env, stdout=sink, stderr=subprocess.STDOUT)

    def explain(self) -> str:
        return self.output.read_text()[-3000:] + "\n--- train.log ---\n" + (self.log()[-5000:] or "(none)")

    def _until(self, probe, what: str, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while (found := probe()) is None:
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.explain()}"
            time.sleep(0.1)
        return found

    def steps_done(self) -> int:
        try:
            return len(metrics(self.run_dir))
        except (OSError, KeyError):
            return 0

    def wait_for_steps(self, n: int) -> int:
        return self._until(lambda: done if (done := self.steps_done()) >= n else None, f"{n} steps")

    def running_job(self) -> str:
        jobs = _squeue("-t", "RUNNING", "-o", "%i")
        assert len(jobs) == 1, jobs
        return jobs[0]

    def seconds_until_gone(self, job: str, since: float) -> float:
        self._until(lambda: True if not _squeue("-j", job) else None, f"job {job} to end", timeout=120)
        return time.monotonic() - since

    def resumed(self, since: float) -> tuple[int, float]:
        """(the step the retry resumed from, seconds from ``since`` to that log line)."""
        step = self._until(lambda: (m := re.search(r"resuming from \S+ \(step (\d+)\)", self.log()))
                           and int(m.group(1)), "the retry to resume")
        return step, time.monotonic() - since

    def log(self) -> str:
        path = self.run_dir / "train.log"
        return path.read_text() if path.exists() else ""

    def finish(self) -> None:
        try:
            self.proc.wait(timeout=600)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        assert self.proc.returncode == 0, self.explain()

    def stop(self) -> None:
        """After a failed test: end Snakemake and cancel its jobs, so the next test finds the cluster idle."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for job in _squeue("-o", "%i"):
            subprocess.run(["scancel", job], check=False)

    def train_jobs(self) -> int:
        """SLURM jobs submitted for the train rule (one log each)."""
        return len(list((self.wf / "logs/slurm/rule_train").rglob("*.log")))


@pytest.fixture
def start_fault_run(slurm_cluster, test_rewards, tmp_path):
    """Starts the fault run (call it when the test is ready); stops whatever is left at the end."""
    runs: list[FaultRun] = []

    def start() -> FaultRun:
        runs.append(FaultRun(tmp_path, test_rewards, slurm_cluster))
        return runs[-1]

    yield start
    for run in runs:
        run.stop()


@pytest.mark.slow
def test_a_rank_killed_on_the_second_node_fails_the_launch_and_the_retry_resumes(start_fault_run, fault_reference):
    run = start_fault_run()
    run.wait_for_steps(4)
    job, pid = run.running_job(), _rank_pid("n2")
    done = run.steps_done()
    os.kill(pid, 9)
    killed = time.monotonic()
    failed_after = run.seconds_until_gone(job, killed)
    step, resumed_after = run.resumed(killed)
    run.finish()
    assert failed_after < 60, failed_after  # the launch fails; nothing waits on the dead rank
    assert 0 <= done - step <= CHECKPOINT_EVERY and step % CHECKPOINT_EVERY == 0, (done, step)
    assert "SIGKILL" in run.log()  # torch.distributed.run's summary names the signal
    assert run.train_jobs() == 2  # the profile's retry
    diff = _assert_same_training(run.wf, fault_reference, "tiny/grpo", STEPS)
    print(f"SIGKILL of the rank on n2 after {done} steps: job failed after {failed_after:.1f} s, "
          f"resumed from step {step} after {resumed_after:.1f} s ({done - step} step(s) lost), "
          f"max |dw| = {diff:.2e}")


@pytest.mark.slow
def test_the_warning_signal_checkpoints_mid_run_and_the_retry_loses_no_step(start_fault_run, fault_reference):
    """What SLURM does at `--signal=<sig>@<lead>` (or on `scancel --signal`): every process of the
    job's steps gets the profile's signal; only the ranks act on it."""
    run = start_fault_run()
    run.wait_for_steps(4)
    job = run.running_job()
    done = run.steps_done()
    subprocess.run(["scancel", f"--signal={SIGNAL}", job], check=True)
    signalled = time.monotonic()
    stopped_after = run.seconds_until_gone(job, signalled)
    step, resumed_after = run.resumed(signalled)
    run.finish()
    log = run.log()
    assert f"stopped by SIG{SIGNAL} after step {step}: checkpoint written" in log
    assert f"launch stopped on SIG{SIGNAL}" in log  # the train verb exits 75: a retry, not an error
    assert step >= done, (done, step)  # no finished step lost
    assert step > done // CHECKPOINT_EVERY * CHECKPOINT_EVERY  # newer than the last periodic checkpoint
    assert run.train_jobs() == 2
    diff = _assert_same_training(run.wf, fault_reference, "tiny/grpo", STEPS)
    print(f"SIG{SIGNAL} after {done} steps: checkpoint of step {step}, job ended after {stopped_after:.1f} s, "
          f"resumed after {resumed_after:.1f} s (0 steps lost), max |dw| = {diff:.2e}")


@pytest.mark.slow
def test_a_drained_second_node_makes_the_job_wait_and_a_running_job_finish(start_fault_run, fault_reference):
    _scontrol("update", "nodename=n2", "state=drain", "reason=rsgrpo-test")
    try:
        run = start_fault_run()
        first = run._until(lambda: _squeue("-t", "PENDING", "-o", "%i|%r") or None, "the job to be pending")
        time.sleep(3)  # a few scheduling passes: still waiting, and SLURM says why
        job, reason = _squeue("-t", "PENDING", "-o", "%i|%r")[0].split("|", 1)
        reasons = {first[0].split("|", 1)[1], reason}
        assert any("UnavailableNodes:n2" in r or "DRAINED" in r for r in reasons), reasons
        assert not (run.run_dir / "checkpoints").exists()  # nothing ran, nothing written
        _scontrol("update", "nodename=n2", "state=resume")
        resumed = time.monotonic()
        run.wait_for_steps(4)
        _scontrol("update", "nodename=n2", "state=drain", "reason=rsgrpo-test")  # while the job runs
        # polled, not slept on: the job's last steps take a second or two
        state = run._until(lambda: t if (t := _node_state("n2")).startswith("dr") else None, "n2 to drain")
        assert state == "drng" and run.running_job() == job  # draining: the running job keeps its node
        run.finish()
    finally:
        _scontrol("update", "nodename=n2", "state=resume")
    assert run.train_jobs() == 1  # waited, then ran once: no failure, no retry
    diff = _assert_same_training(run.wf, fault_reference, "tiny/grpo", STEPS)
    print(f"n2 drained: job {job} pending, squeue reasons {sorted(reasons)}; "
          f"drained again mid-run: n2 {state}, the job finished, max |dw| = {diff:.2e}; "
          f"from resume to the end {time.monotonic() - resumed:.0f} s")


class _Resources(dict):
    __getattr__ = dict.__getitem__


class _Job:
    def __init__(self, resources: dict, threads: int):
        self.resources, self.threads = _Resources(resources), threads


def _sbatch_of_train_job(tmp_path, model: dict) -> str:
    """The sbatch command the pinned slurm executor plugin builds for the train job of a cell of
    ``model`` (resources and threads as the dry run resolves them, with the profile's own)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    cfg = dict(TINY, models={"tiny": dict(TINY["models"]["tiny"], **model)},
               sweeps=[{"models": ["tiny"], "methods": ["grpo"]}])
    wf = copy_workflow(tmp_path)
    config = write_config(tmp_path / "c.yaml", cfg)
    out = snakemake(wf, "-n", "results/tiny/grpo/manifest.json", "--configfile", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    resources = dry_run_resources(out.stdout)["train"]
    resources.update(PROFILE_TRAIN)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="", partition="-p debug", workdir="")
    job = _Job(resources, threads=2)
    return get_submit_command(job, params) + set_gres_string(job)  # as the plugin's executor does


def test_a_job_of_two_nodes_asks_sbatch_for_one_task_on_each(tmp_path):
    """Without GPUs the plugin submits --ntasks=<tasks> (1 by default, and SLURM then shrinks
    --nodes=2 to one node); with GPUs `tasks` would become --ntasks-per-gpu unless tasks_per_gpu is 0."""
    cpu = _sbatch_of_train_job(tmp_path / "cpu", {"nodes": 2, "cpu_processes": 1})
    assert "--nodes=2" in cpu and "--ntasks=2" in cpu, cpu
    assert f"--signal={SIGNAL}@300" in cpu
    gpu = _sbatch_of_train_job(tmp_path / "gpu", {"nodes": 2, "gpus": 4})
    assert "--nodes=2" in gpu and "--gpus=8" in gpu and "--ntasks" not in gpu, gpu
