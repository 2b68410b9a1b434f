"""Data-parallel training on CPU (gloo): N ranks follow the 1-rank trajectory, a checkpoint written by
2 ranks resumes on 1, ZeRO-3 gathers return the exact full weights and optimizer state, a failing
rank fails the launch instead of hanging, and the launcher command for one node and for SLURM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_helpers import ROOT, kill_after_first_checkpoint, metrics, run_env, train_cmd, write_run_inputs  # noqa: E402
from train_helpers import assert_rows_close as _assert_rows_close  # noqa: E402
from train_helpers import run_checked as _run  # noqa: E402
from train_helpers import weights as _weights  # noqa: E402

from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train.distributed.collectives import under_launcher  # noqa: E402
from rsgrpo.train.distributed.launch import IGNORING_USR1, launch_command, rendezvous_port, srun_environment  # noqa: E402


@pytest.mark.parametrize("stage,offload", [(0, False), (2, True)])
def test_two_ranks_follow_the_one_rank_loss_curve(tiny_model_dir, tmp_path, one_rank_reference, stage, offload):
    """Same global batch and seed: every metric (loss, rewards, entropy, grad norm...) and the final
    weights agree with the 1-rank run to float tolerance (only summation order differs); also with
    ZeRO-2 and the optimizer state offloaded to host memory."""
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, zero_stage=stage, offload_optimizer=offload)
    out = _run(train_cmd(runner, cfg, tmp_path / "run", "--nproc", "2"))
    assert "launching 2 rank(s) per node" in out.stderr
    ref_rows, rows = metrics(one_rank_reference), metrics(tmp_path / "run")
    assert len(rows) == 6
    _assert_rows_close(ref_rows, rows, rel=1e-4)
    losses = [float(r["loss"]) for r in rows if r["loss"] != "nan"]
    assert len(losses) >= 4 and any(abs(x) > 1e-4 for x in losses)  # a real curve, not zeros
    # dynamic sampling refilled some step: the selection spans rounds and ranks
    assert any(int(r["gen_rounds"]) > 1 for r in rows)
    w_ref, w = _weights(one_rank_reference, 6), _weights(tmp_path / "run", 6)
    assert w.keys() == w_ref.keys()
    for k in w:
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=2e-5)
    w0 = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max(float((w[k] - w0[k]).abs().max()) for k in w) > 1e-3  # it trained
    # only rank 0 wrote: one metrics row per step, one manifest
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["final_step"] == 6 and [c["step"] for c in manifest["checkpoints"]] == [4, 6]
    assert ckpt.load_state(tmp_path / "run" / "checkpoints" / "step-000006")["world_size"] == 2


def test_two_ranks_with_token_budget_micro_batches_follow_the_one_rank_run(tiny_model_dir, tmp_path,
                                                                          one_rank_reference):
    """micro_batch_tokens 1: every pair its own micro-batch, longest first, so a rank runs as many as it has
    pairs and one with fewer pads with masked ones; the run still follows the 1-rank run of contiguous
    micro-batches (the same token-mean loss, summed in another order)."""
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, micro_batch_tokens=1)
    _run(train_cmd(runner, cfg, tmp_path / "run", "--nproc", "2"))
    ref_rows, rows = metrics(one_rank_reference), metrics(tmp_path / "run")
    assert len(rows) == 6
    _assert_rows_close(ref_rows, rows, rel=1e-4)
    w_ref, w = _weights(one_rank_reference, 6), _weights(tmp_path / "run", 6)
    for k in w:
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=2e-5)


POLICY_LOSS_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from rsgrpo.train.actor import Actor
    from rsgrpo.train.config import from_dict
    from rsgrpo.train.distributed import collectives
    from rsgrpo.train.policy_losses import LOSS_AGGS, POLICY_LOSSES

    model_dir, out = sys.argv[1], sys.argv[2]
    info = collectives.init_distributed()
    # 1 rank: contiguous micro-batches of 4; 2 ranks: token-budget micro-batches (one or two rows each)
    budget = None if info.world_size == 1 else 40
    actor = Actor(from_dict(dict(model_dir=model_dir, engine="hf", lr=1e-3, weight_decay=0.0, grad_clip=0.0,
                                 micro_batch_size=4, micro_batch_tokens=budget, max_new_tokens=40)), model_dir)
    gen = torch.Generator().manual_seed(11)
    vocab = actor.model.config.vocab_size
    pairs = [(torch.randint(3, vocab, (4,), generator=gen).tolist(), torch.randint(3, vocab, (n,), generator=gen)
              .tolist()) for n in (3, 33, 1, 17, 9, 25, 2, 12, 6, 29, 4, 20)]
    advantages = torch.randn(len(pairs), generator=gen)
    own, _ = actor.logprobs(pairs)  # every rank: all pairs, the same micro-batches
    noise = {"ppo_clip": 0.5, "gspo": 3e-3, "cispo": 0.3}
    olds = {kind: [lp + noise[kind] * torch.randn(lp.shape, generator=gen) for lp in own] for kind in POLICY_LOSSES}
    # the ranks' blocks, uneven (5 and 7 pairs): the denominators are the step's, not a rank's
    rows = range(len(pairs)) if info.world_size == 1 else (range(5) if info.rank == 0 else range(5, len(pairs)))
    rows = list(rows)
    grads, step = [], actor.engine.step

    def spy():  # the averaged gradients at the accumulation boundary
        grads.append(torch.cat([p.grad.detach().flatten() for p in actor.model.parameters()]))
        step()

    actor.engine.step = spy
    report = {}
    for kind, spec in POLICY_LOSSES.items():
        for agg in LOSS_AGGS:  # all 9 (gspo's config refuses 2; its math is rank-invariant all the same)
            cfg = actor.cfg
            cfg.policy_loss, cfg.loss_agg, cfg.clip_low, cfg.clip_high = kind, agg, spec.clip_low, spec.clip_high
            cfg.clip_ratio_c = 3.0 if spec.dual_clip else None
            stats = actor.update([pairs[r] for r in rows], advantages[rows], lr=0.0,
                                 old_logp=[olds[kind][r] for r in rows])
            report[f"{kind} {agg}"] = {"loss": stats.loss, "clip_frac": stats.clip_frac,
                                       "grad_norm": stats.grad_norm, "grads": grads.pop()}
    if info.is_main:
        torch.save(report, out)
""")


def test_every_policy_loss_and_aggregation_on_two_ranks_equals_one_rank(tiny_model_dir, tmp_path):
    """All 9 policy_loss x loss_agg pairs in one 2-rank launch against one 1-rank process: off-policy
    (old log-probs given, the clips acting), uneven blocks of 5 and 7 pairs, token-budget micro-batches
    on 2 ranks and contiguous ones on 1: loss, clip fraction, gradient norm and the averaged gradients
    agree to float tolerance (the sequences and tokens of the whole step divide every micro-batch)."""
    script = tmp_path / "policy_losses.py"
    script.write_text(POLICY_LOSS_SCRIPT)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    _run([sys.executable, str(script), str(tiny_model_dir), str(one)], timeout=300)
    _run(launch_command(2, [str(tiny_model_dir), str(two)], env={}, entry=[str(script)]), timeout=300)
    ref, got = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert len(ref) == 9 and ref.keys() == got.keys()
    for name, want in ref.items():
        assert abs(want["loss"]) > 1e-3 and want["grad_norm"] > 1e-3 and 0 < want["clip_frac"] < 1, (name, want)
        for key in ("loss", "clip_frac", "grad_norm"):
            assert got[name][key] == pytest.approx(want[key], rel=1e-5), (name, key)
        torch.testing.assert_close(got[name]["grads"], want["grads"], rtol=1e-5, atol=1e-7, msg=name)


def test_two_rank_zero3_run_killed_and_resumed_with_one_rank(tiny_model_dir, tmp_path, one_rank_reference):
    """SIGKILL the whole 2-rank ZeRO-3 launch after a checkpoint; the same command with --nproc 1
    (and ZeRO 0) resumes from it and ends on the 1-rank run's weights (the optimizer moments moved
    over: without them the first resumed step would differ by ~lr)."""
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, zero_stage=3)
    run = tmp_path / "run"
    killed_at = kill_after_first_checkpoint(train_cmd(runner, cfg, run, "--nproc", "2"), run,
                                            run_env(RSGRPO_TEST_STEP_SLEEP="0.7"))
    assert killed_at < 6
    assert ckpt.load_state(ckpt.latest_checkpoint(run)[1])["world_size"] == 2
    cfg.write_text(cfg.read_text().replace("zero_stage: 3", "zero_stage: 0"))
    out = _run(train_cmd(runner, cfg, run, "--nproc", "1"))
    assert f"(step {killed_at}) with 1 rank(s)" in out.stderr
    assert json.loads((run / "manifest.json").read_text())["final_step"] == 6
    _assert_rows_close(metrics(one_rank_reference), metrics(run), rel=1e-4)
    w_ref, w = _weights(one_rank_reference, 6), _weights(run, 6)
    for k in w_ref:
        torch.testing.assert_close(w[k], w_ref[k], rtol=0, atol=2e-5)


def test_a_two_rank_zero3_save_is_split_and_no_rank_holds_the_whole_state(tiny_model_dir, tmp_path):
    """bf16-mixed, ZeRO-3, 2 ranks: each rank writes the AdamW moments and fp32 masters of its own half
    of the parameters and never holds more than that; the shards together are the whole state, and
    a 1-rank run resumes from them."""
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, zero_stage=3, precision="bf16-mixed", steps=2)
    run = tmp_path / "run"
    _run(train_cmd(runner, cfg, run, "--nproc", "2"))
    folder = run / "checkpoints" / "step-000002"
    summaries = [json.loads((folder / ckpt.RESUME_DIR / f"rank-{r:05d}.json").read_text()) for r in (0, 1)]
    total = sum(s["bytes"] for s in summaries)
    for summary in summaries:
        assert 0.25 * total < summary["bytes"] < 0.75 * total  # about half each
        assert summary["max_held_bytes"] <= summary["bytes"] < total
    state = ckpt.load_state(folder)
    names = set(_weights(run, 2))
    for view in (state["optimizer"]["exp_avg"], state["optimizer"]["exp_avg_sq"], state["masters"]):
        assert set(view) == names  # every parameter once, across the two ranks' files
    assert sum(s["tensors"] for s in summaries) == 3 * len(names)
    cfg.write_text(cfg.read_text().replace("steps: 2", "steps: 3").replace("zero_stage: 3", "zero_stage: 1"))
    out = _run(train_cmd(runner, cfg, run, "--nproc", "1"))
    assert "(step 2) with 1 rank(s)" in out.stderr
    assert json.loads((run / "manifest.json").read_text())["final_step"] == 3


def test_a_failing_rank_fails_the_launch_without_hanging(tiny_model_dir, tmp_path):
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir)
    start = time.monotonic()
    out = subprocess.run(train_cmd(runner, cfg, tmp_path / "run", "--nproc", "2"), cwd=ROOT,
                         env=run_env(RSGRPO_TEST_FAIL="1:2"), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert "injected failure of rank 1 at step 2" in out.stderr
    assert elapsed < 120, f"the launch took {elapsed:.0f} s to fail"
    # what was checkpointed before the failure is intact and resumable
    assert ckpt.latest_checkpoint(tmp_path / "run")[0] == 2


ZERO3_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file
    from rsgrpo.train.distributed import collectives, zero_state
    from rsgrpo.prepare.loading import load_policy
    import deepspeed

    model_dir, out = sys.argv[1], sys.argv[2]
    info = collectives.init_distributed()
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (3, 12))

    def engine(stage):
        model, _ = load_policy(model_dir)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
               "zero_optimization": {"stage": stage}, "steps_per_print": 10 ** 12}
        return deepspeed.initialize(model=model, optimizer=opt, config=cfg)[0], model

    ds, model = engine(3)
    initial = load_file(model_dir + "/model.safetensors")
    gathered = dict(zero_state.gathered_parameters(model, bucket_numel=5000))  # many buckets
    report = {"world": info.world_size,
              "partitioned": all(p.numel() == 0 or p.numel() < p.ds_numel for p in model.parameters()),
              "initial_exact": sorted(initial) == sorted(k for k in gathered if k in initial)
                               and all(torch.equal(gathered[k], initial[k]) for k in initial),
              "names": sorted(gathered)}
    # one step with the same loss on every rank: averaged gradients = the single-process gradient
    loss = ds(input_ids=ids, use_cache=False).logits.float().pow(2).mean()
    ds.backward(loss)
    ds.step()
    state = zero_state.full_optimizer_state(ds, model)
    after = dict(zero_state.gathered_parameters(model, include_aliases=False))
    # the reference: plain AdamW on the full model, one process
    ref, _ = load_policy(model_dir)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    ref(input_ids=ids, use_cache=False).logits.float().pow(2).mean().backward()
    ref_opt.step()
    err = lambda a, b: float((a - b).abs().max())
    report["step"] = state["step"]
    report["weights_err"] = max(err(after[n], p.detach()) for n, p in ref.named_parameters())
    report["exp_avg_err"] = max(err(state["exp_avg"][n], ref_opt.state[p]["exp_avg"])
                                for n, p in ref.named_parameters())
    report["exp_avg_sq_err"] = max(err(state["exp_avg_sq"][n], ref_opt.state[p]["exp_avg_sq"])
                                   for n, p in ref.named_parameters())
    report["exp_avg_scale"] = max(float(ref_opt.state[p]["exp_avg"].abs().max()) for p in ref.parameters())
    # round trip into a fresh ZeRO-3 engine (its own partition layout) and back
    ds2, model2 = engine(3)
    zero_state.load_full_optimizer_state(ds2, model2, state)
    again = zero_state.full_optimizer_state(ds2, model2)
    report["round_trip_exact"] = again["step"] == state["step"] and all(
        torch.equal(again[m][n], state[m][n]) for m in ("exp_avg", "exp_avg_sq") for n in state["exp_avg"])
    # uneven, non-ASCII payloads through the JSON gather the trainer uses for solved ids
    report["gathered"] = collectives.all_gather_json(["id"] * (info.rank + 1) + [f"é{info.rank}"])
    if info.rank == 0:
        with open(out, "w") as fh:
            json.dump(report, fh)
""")


def test_zero3_gather_returns_exact_full_weights_and_optimizer_state(tiny_model_dir, tmp_path):
    script = tmp_path / "zero3.py"
    script.write_text(ZERO3_SCRIPT)
    out = tmp_path / "report.json"
    cmd = launch_command(2, [str(tiny_model_dir), str(out)], env={}, entry=[str(script)])
    _run(cmd, timeout=300)
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["partitioned"]
    assert r["initial_exact"]  # bit-exact full weights out of two partitions
    assert "lm_head.weight" in r["names"] or "model.embed_tokens.weight" in r["names"]
    assert r["step"] == 1
    # one AdamW step moves every weight by ~lr = 1e-2; where a gradient is near eps (1e-8) the step
    # is sensitive to its last bits, so the weights agree to 1% of a step, the moments to ~1e-7 relative
    assert r["weights_err"] < 1e-4
    assert r["exp_avg_scale"] > 1e-4  # the moments are not trivially zero
    assert r["exp_avg_err"] < 1e-7 and r["exp_avg_sq_err"] < 1e-9
    assert r["round_trip_exact"]
    assert r["gathered"] == [["id", "é0"], ["id", "id", "é1"]]


# ------------------------------------------------------------------------------------------------
# launcher command lines (pure)
# ------------------------------------------------------------------------------------------------
def test_launch_command_one_node():
    cmd = launch_command(4, ["train", "--config", "c.yaml"], env={}, python="py")
    assert cmd == [*IGNORING_USR1, "py", "-m", "torch.distributed.run", "--standalone", "--max-restarts", "0",
                   "--nproc-per-node", "4", "-m", "rsgrpo", "train", "--config", "c.yaml"]
    # a SLURM job of one node is still standalone
    assert "--standalone" in launch_command(2, ["train"], env={"SLURM_JOB_NUM_NODES": "1"}, python="py")


def test_launch_command_slurm_multi_node():
    # inside Snakemake's one-task step: the step has 1 node, the job 3
    env = {"SLURM_JOB_NUM_NODES": "3", "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "gpu[07-09]"}
    cmd = launch_command(8, ["train", "--run-dir", "runs/x"], env=env, head_node="gpu07", python="py")
    assert cmd[:6] == ["srun", "--overlap", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                       "--kill-on-bad-exit=1"]
    assert "--standalone" not in cmd
    assert tuple(cmd[6:10]) == IGNORING_USR1  # SLURM signals the launchers directly
    tail = cmd[10:]
    assert tail[:3] == ["py", "-m", "torch.distributed.run"]
    for flag, value in [("--nproc-per-node", "8"), ("--nnodes", "3"), ("--rdzv-backend", "c10d"),
                        ("--rdzv-endpoint", "gpu07:24242"), ("--rdzv-id", "4242"),
                        ("--max-restarts", "0")]:
        assert tail[tail.index(flag) + 1] == value
    assert tail[-5:] == ["-m", "rsgrpo", "train", "--run-dir", "runs/x"]
    # the job's CPUs per node go to each node's launcher task (srun does not inherit --cpus-per-task)
    cpus = launch_command(8, ["train"], env={**env, "SLURM_JOB_CPUS_PER_NODE": "32(x3)"}, head_node="gpu07",
                          python="py")
    assert cpus[:7] == ["srun", "--overlap", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                        "--cpus-per-task=32", "--kill-on-bad-exit=1"]


def test_jobs_that_run_at_the_same_time_meet_at_different_ports():
    """Two multi-node jobs with the same first node must not share a rendezvous store: the second
    would join the first's store and die when the first job ends (this happened to the two-node
    test cluster, whose nodes share a host). Each job id names its own port, on every node alike."""
    ports = [rendezvous_port(str(job)) for job in range(123_400, 123_400 + 10_000)]
    assert len(set(ports)) == 10_000  # any 10,000 consecutive job ids
    assert min(ports) == 20_000 and max(ports) == 29_999  # below the ephemeral range (32768+)
    assert rendezvous_port("4242") == 24242 == rendezvous_port("14242")
    assert rendezvous_port("rsgrpo") == rendezvous_port("rsgrpo")  # not a SLURM id: still one port
    assert 20_000 <= rendezvous_port("rsgrpo") < 30_000


def test_the_launcher_wrapper_ignores_usr1_and_passes_the_command_through():
    """What srun starts on each node: SIGUSR1 (SLURM's warning, sent to every process of the step)
    must not end torch.distributed.run, whose arguments arrive unchanged (spaces, quotes)."""
    probe = ("import signal, sys, time; "
             "print(signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, sys.argv[1:], flush=True); time.sleep(30)")
    proc = subprocess.Popen([*IGNORING_USR1, sys.executable, "-c", probe, "a b", "'c'"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "True ['a b', \"'c'\"]"
        proc.send_signal(signal.SIGUSR1)  # the exec'd process itself (no bash left in between)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_the_launchers_srun_sees_the_job_not_the_step_it_runs_in():
    step = {"SLURM_JOB_ID": "7", "SLURM_CONF": "/etc/slurm/slurm.conf", "SLURM_NNODES": "1", "SLURM_STEP_ID": "0",
            "SLURM_NTASKS": "1", "SLURM_NODELIST": "n1", "SRUN_CPUS_PER_TASK": "32", "SBATCH_PARTITION": "gpu",
            "PATH": "/bin", "OMP_NUM_THREADS": "4"}
    assert srun_environment(step) == {"SLURM_JOB_ID": "7", "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin",
                                      "OMP_NUM_THREADS": "4"}


def test_inside_a_job_step_scontrol_gives_the_jobs_nodes_and_the_head_nodes_address(tmp_path, monkeypatch):
    """Inside the one-node step that runs the train command (Snakemake's jobstep srun) the SLURM
    variables describe the step (1 node) and the job's own are stripped: the node count and list
    come from `scontrol show job`, the rendezvous address from the first node's NodeAddr."""
    from rsgrpo.train.distributed.launch import _scontrol_show, slurm_job_nodes

    _scontrol_show.cache_clear()  # answers of the real scontrol (if any) must not stand in for the fake's

    fake = tmp_path / "scontrol"
    fake.write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        case "$1 $2" in
          "show job") [ "$3" = 7 ] && echo "JobId=7 JobName=train NumNodes=2 NumCPUs=4 NodeList=n[1-2] BatchHost=n1" ;;
          "show hostnames") [ "$3" = "n[1-2]" ] && printf 'n1\\nn2\\n' ;;
          "show node") [ "$3" = n1 ] && echo "NodeName=n1 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=vm" ;;
        esac
        """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    step = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODELIST": "n1"}
    assert slurm_job_nodes(step) == 2
    cmd = launch_command(1, ["train"], env=step, python="py")
    assert cmd[:4] == ["srun", "--overlap", "--nodes=2", "--ntasks=2"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "10.1.2.3:20007"
    assert slurm_job_nodes({"SLURM_JOB_ID": "8", "SLURM_JOB_NUM_NODES": "3"}) == 3  # scontrol knows no job 8
    assert slurm_job_nodes({}) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_launch_command_rejects_bad_process_counts(bad):
    with pytest.raises(ValueError, match="--nproc"):
        launch_command(bad, ["train"], env={})


def test_under_launcher():
    assert under_launcher({"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"})
    assert under_launcher({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})  # torchrun, 1 rank
    assert not under_launcher({"SLURM_NNODES": "2"})
    # what a process that initialised DeepSpeed leaves to its children is not a launcher
    assert not under_launcher({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})


def test_indivisible_batch_is_refused_before_training(tiny_model_dir, tmp_path):
    cfg, runner = write_run_inputs(tmp_path, tiny_model_dir, prompts_per_step=3)
    out = subprocess.run(train_cmd(runner, cfg, tmp_path / "run", "--nproc", "2"), cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "'prompts_per_step'" in out.stderr and "cannot be split evenly over 2 ranks" in out.stderr
    assert ckpt.latest_checkpoint(tmp_path / "run") is None


def test_train_cli_rejects_nproc_zero(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rsgrpo", "train", "--nproc", "0"], cwd=ROOT, env=run_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--nproc must be >= 1" in out.stderr


# ------------------------------------------------------------------------------------------------
# ZeRO-3: built partitioned, refreshed from the gathered tensors, saved by rank 0 alone
# ------------------------------------------------------------------------------------------------
ACTOR_ZERO3_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from safetensors.torch import load_file
    from rsgrpo.train.distributed import collectives

    model_dir, out = sys.argv[1], sys.argv[2]
    info = collectives.init_distributed(timeout_minutes=45)
    from transformers.integrations import is_deepspeed_zero3_enabled
    from deepspeed.utils import safe_get_full_fp32_param
    from rsgrpo.prepare import loading
    from rsgrpo.train import actor as A
    from rsgrpo.train.config import from_dict

    linear, loaded, load_policy = torch.nn.functional.linear, {}, loading.load_policy

    def spy(*args, **kwargs):  # the model as load_policy hands it over, before deepspeed.initialize
        model, tok = load_policy(*args, **kwargs)
        params = list(model.parameters())
        loaded.update(partitioned=all(hasattr(p, "ds_id") and p.numel() == 0 for p in params),
                      local=sum(p.ds_tensor.numel() for p in params), full=sum(p.ds_numel for p in params),
                      tied=model.lm_head.weight is model.model.embed_tokens.weight)
        return model, tok

    loading.load_policy = spy
    actor = A.Actor(from_dict(dict(model_dir=model_dir, zero_stage=3, precision="bf16-mixed", engine="hf")),
                    model_dir)
    loading.load_policy = load_policy
    source = load_file(model_dir + "/model.safetensors")
    rounded = {k: v.bfloat16() for k, v in source.items()}
    state = actor.model.state_dict(keep_vars=True)

    class Copies:
        """Counts host copies (Tensor.to / .cpu / .clone returning new storage on the CPU) while on."""
        def __init__(self):
            self.n, self.on = 0, True
        def __enter__(self):
            self.saved = {m: getattr(torch.Tensor, m) for m in ("to", "cpu", "clone")}
            for m, f in self.saved.items():
                setattr(torch.Tensor, m, self.wrap(f))
            return self
        def wrap(self, f):
            def counted(t, *a, **k):
                r = f(t, *a, **k)
                if self.on and isinstance(r, torch.Tensor) and r.device.type == "cpu" and r.data_ptr() != t.data_ptr():
                    self.n += 1
                return r
            return counted
        def __exit__(self, *exc):
            for m, f in self.saved.items():
                setattr(torch.Tensor, m, f)

    class Engine:  # a rollout engine: each tensor is checked while the engine holds it
        def load_named_weights(self, weights):
            self.names, self.live, self.exact = [], True, True
            for name, tensor in weights:
                self.names.append(name)
                own = state[name]  # a gathered parameter (the tied head's alias included) or a buffer
                self.live &= tensor.data_ptr() == own.data_ptr() and tensor.numel() == own.numel() > 0
                self.exact &= torch.equal(tensor, rounded[name]) if name in rounded else True

    class Writer:
        def write_resume(self, tensors):
            copies.on = False  # this rank's share of the optimizer state: its own copies
            self.resume = sum(1 for _ in tensors)
            copies.on = True
        def write_weights(self, model, tok, weights):
            self.weights = dict(weights)

    engine, writer = Engine(), Writer()
    with Copies() as copies:
        actor.sync_engine(engine)
    refresh_copies = copies.n
    with Copies() as copies:
        actor.write_checkpoint_files(writer, rank=info.rank, world_size=info.world_size, is_main=info.is_main)
    saved = getattr(writer, "weights", None)
    group = torch.distributed.group.WORLD._get_backend(torch.device("cpu"))
    report = dict(loaded, linear_original=torch.nn.functional.linear is linear,
                  zero3_switch=is_deepspeed_zero3_enabled(),
                  refresh_names=sorted(engine.names), refresh_live=engine.live, refresh_exact=engine.exact,
                  refresh_copies=refresh_copies, save_copies=copies.n,
                  timeout_s=group.options._timeout.total_seconds(),
                  buffers={n: str(b.dtype) for n, b in actor.model.named_buffers()},
                  masters_exact=all(torch.equal(safe_get_full_fp32_param(p), source[n])
                                    for n, p in actor.model.named_parameters()),
                  saved=None if saved is None else sorted(saved),
                  saved_exact=saved is not None and all(
                      saved[k].device.type == "cpu" and torch.equal(saved[k], rounded[k]) for k in source))
    with open(f"{out}.{info.rank}", "w") as fh:
        json.dump(report, fh)
''')


def test_a_zero3_actor_is_built_partitioned_and_refreshes_from_the_gathered_tensors(tiny_model_dir, tmp_path):
    """Two ranks, ZeRO-3, bf16-mixed. The model reaches the actor already partitioned (zero.Init): no
    parameter has data of its own, each rank holds half; tied embeddings still tie; torch's linear is
    untouched. It starts from exactly the source weights (bf16 rounding) and fp32 masters, RoPE's
    buffers stay fp32. The engine refresh hands over the gathered parameters themselves (same storage,
    no host copy, the tied head included) on every rank; a checkpoint's weights are copied to the
    host on rank 0 only (rank 1 takes part in the gather and copies nothing). The process group waits
    the configured 45 minutes."""
    script = tmp_path / "actor_zero3.py"
    script.write_text(ACTOR_ZERO3_SCRIPT)
    out = tmp_path / "report"
    _run(launch_command(2, [str(tiny_model_dir), str(out)], env={}, entry=[str(script)]), timeout=300)
    r0, r1 = (json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1))
    source = load_file(Path(tiny_model_dir) / "model.safetensors")
    for r in (r0, r1):
        assert r["partitioned"] and r["tied"] and r["full"] == sum(t.numel() for t in source.values())
        assert r["local"] == r["full"] // 2  # each rank's partition: half the elements
        assert r["linear_original"] and not r["zero3_switch"]
        assert r["masters_exact"] and r["refresh_exact"]
        assert set(r["buffers"].values()) == {"torch.float32"}
        assert r["refresh_live"] and r["refresh_copies"] == 0
        assert "lm_head.weight" in r["refresh_names"] and set(source) <= set(r["refresh_names"])
        assert r["timeout_s"] == 45 * 60
    assert r0["saved"] == sorted(source) and r0["saved_exact"] and r0["save_copies"] == len(source)
    assert r1["saved"] is None and r1["save_copies"] == 0


TIMEOUT_SCRIPT = textwrap.dedent('''
    import datetime, json, sys
    import deepspeed, torch
    import torch.distributed as dist
    from rsgrpo.train.distributed import collectives

    seen = {}
    ds_init, pg_init = deepspeed.init_distributed, dist.init_process_group
    def ds_spy(*args, **kwargs):
        seen["deepspeed"] = kwargs.get("timeout")
        return ds_init(*args, **kwargs)
    def pg_spy(*args, **kwargs):
        seen["torch"] = kwargs.get("timeout")
        return pg_init(*args, **kwargs)
    deepspeed.init_distributed, dist.init_process_group = ds_spy, pg_spy

    def group_timeout():
        return dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout.total_seconds()

    collectives.init_distributed(timeout_minutes=180)
    first = group_timeout()
    collectives.init_distributed(timeout_minutes=7.5)  # an initialised group takes the new timeout
    print(json.dumps({"first": first, "again": group_timeout(),
                      **{k: v.total_seconds() for k, v in seen.items()}}))
''')


def test_init_distributed_gives_the_process_group_the_configured_timeout(tmp_path):
    """DeepSpeed's 10-minute default would end a job whose ranks wait through long generation or a
    large checkpoint: the timeout reaches deepspeed.init_distributed, torch's init_process_group and
    the one-rank gloo group itself."""
    script = tmp_path / "timeout.py"
    script.write_text(TIMEOUT_SCRIPT)
    out = _run([sys.executable, str(script)], timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"first": 180 * 60.0, "again": 7.5 * 60,
                                                             "deepspeed": 180 * 60.0, "torch": 180 * 60.0}

