"""The judgments of scripts/gpu_check.py: pure functions from what the runs left behind (metrics.csv
rows, the workers' results, what the orchestrator saw) to one PASS/FAIL :class:`Check` each. Their
criteria are described in scripts/gpu_check.py's docstring; tests/test_gpu_check.py feeds them by hand."""

from __future__ import annotations

import math
import signal
from typing import NamedTuple

STEPS = 3           # steps of every run
STALE_STEP = 3      # the ZeRO-1 step generated with stale weights (1-based, as metrics.csv counts)
HOLD_STEP = 3       # the ZeRO-3 step in whose update the first process is killed
CHECKPOINT_EVERY = 2  # the ZeRO-3 run's checkpoints: the killed process holds step 2's


class Check(NamedTuple):
    name: str
    ok: bool
    text: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.text}"


def exit_code(checks: list[Check]) -> int:
    return 0 if checks and all(c.ok for c in checks) else 1


def num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def step_of(row: dict) -> int | None:
    """A metrics.csv row's step (1-based), None when it has none."""
    value = num(row.get("step"))
    return int(value) if math.isfinite(value) else None


def _span(values: list[float], fmt: str = ".3g") -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def check_update(name: str, rows: list[dict], weights: dict | None, steps: int = STEPS) -> Check:
    """Every step trained on rewards that vary (advantages > 0), with a finite gradient norm > 0, and
    the final weights differ from the initial ones and are finite."""
    if [step_of(r) for r in rows] != list(range(1, steps + 1)):
        return Check(name, False, f"metrics.csv has steps {[r.get('step') for r in rows]}, expected 1..{steps}")
    problems = []
    for row in rows:
        grad, reward = num(row.get("grad_norm")), num(row.get("reward_mean"))
        adv = [num(row.get(k)) for k in ("adv_abs_correct", "adv_abs_wrong")]
        if not (math.isfinite(grad) and grad > 0):
            problems.append(f"step {row['step']}: grad_norm {grad}")
        if not (0 < reward < 1) or not any(math.isfinite(a) and a > 0 for a in adv):
            problems.append(f"step {row['step']}: rewards do not vary (reward_mean {reward}, |advantages| {adv})")
    if weights is None:
        problems.append("no final checkpoint to compare with the initial weights")
    elif weights.get("error"):
        problems.append(weights["error"])
    else:
        if not weights["changed"]:
            problems.append(f"no weight tensor changed ({weights['tensors']} compared)")
        if not weights["finite"]:
            problems.append("the final weights hold NaN or inf")
    if problems:
        return Check(name, False, "; ".join(problems))
    grads = [num(r["grad_norm"]) for r in rows]
    return Check(name, True, f"{len(rows)} steps, reward mean {_span([num(r['reward_mean']) for r in rows], '.2f')}, "
                             f"grad norm {_span(grads)}, {weights['changed']} of {weights['tensors']} weight tensors "
                             f"changed (max |delta| {weights['max_delta']:.3g})")


def _k3(rows: list[dict], step: int) -> tuple[float, float]:
    row = next((r for r in rows if step_of(r) == step), None)
    if row is None or "mismatch_k3" not in row:
        return float("nan"), float("nan")
    return num(row["mismatch_k3"]), num(row.get("mismatch_abs_max"))


def check_refresh(name: str, rows: list[dict], bound: float, steps: list[int], what: str) -> Check:
    """The mismatch of each of ``steps`` (1-based) is finite and at most ``bound``."""
    if rows and "mismatch_k3" not in rows[0]:
        return Check(name, False, "metrics.csv has no mismatch_k3 column (a trainer without the mismatch metrics)")
    before = _k3(rows, 1)[0]
    figures, problems = [], []
    for step in steps:
        k3, worst = _k3(rows, step)
        figures.append(f"step {step} k3 {k3:.3g} (max |delta log p| {worst:.3g})")
        if not (math.isfinite(k3) and k3 <= bound):
            problems.append(f"step {step}: k3 {k3:.4g} not within the bound {bound:g}")
    text = f"{what}: {'; '.join(figures)}; before any update {before:.3g}; bound {bound:g}"
    return Check(name, not problems, "; ".join(problems) + f" ({text})" if problems else text)


def check_stale(rows: list[dict], bound: float, factor: float, *, fresh_step: int = STALE_STEP - 1,
                stale_step: int = STALE_STEP, stale_pushed: bool = True) -> Check:
    """The deliberately stale step's mismatch is at least ``factor`` x the refreshed step's (and the
    step before any update's)."""
    name = "zero1_stale"
    if not stale_pushed:
        return Check(name, False, f"the weight push before step {stale_step} never reached Actor.sync_engine: the "
                                  "trainer did not push (or pushes another way: update scripts/gpu_check_worker.py)")
    fresh, first, stale = _k3(rows, fresh_step)[0], _k3(rows, 1)[0], _k3(rows, stale_step)[0]
    if not math.isfinite(stale):
        return Check(name, False, f"no mismatch measured at the stale step {stale_step} (k3 {stale})")
    floor = max(v for v in (fresh, first, 1e-12) if math.isfinite(v))  # the refreshed steps' noise
    ratio = stale / floor
    text = (f"step {stale_step} generated one update behind: k3 {stale:.3g} = {ratio:.3g} x the refreshed steps' "
            f"(step {fresh_step} {fresh:.3g}, step 1 {first:.3g}); {'above' if stale > bound else 'within'} the "
            f"bound {bound:g}")
    if ratio < factor:
        return Check(name, False, f"{text}: less than {factor:g} x; the update moved the policy too little to tell "
                                  "stale weights from refreshed ones (raise --lr) or the measure misses them")
    return Check(name, True, text)


def check_speed(speed: dict | None, min_ratio: float, *, cpu: bool) -> Check:
    name = "rollout_speed"
    if not speed:
        return Check(name, False, "not measured")
    if speed.get("error"):
        return Check(name, False, f"the measurement failed: {speed['error']}")
    ours = f"ours {speed['ours_tokens_per_s']:.0f} tokens/s ({speed['ours_tokens']} tokens)"
    if speed.get("raw_tokens_per_s") is None:
        if cpu:
            return Check(name, True, f"--cpu dry run, {ours}; raw vLLM needs a GPU, not judged")
        return Check(name, False, f"{ours}; no raw vLLM to compare with (engine {speed.get('engine')})")
    ratio = speed["ours_tokens_per_s"] / speed["raw_tokens_per_s"]
    text = (f"{ours}, raw vLLM unseeded {speed['raw_tokens_per_s']:.0f} tokens/s ({speed['raw_tokens']} tokens), "
            f"ours / raw {ratio:.2f}")
    if ratio < min_ratio:
        return Check(name, False, f"{text} < {min_ratio:g}")
    return Check(name, True, f"{text} >= {min_ratio:g}")


def check_memory(name: str, results: list[dict], *, cpu: bool) -> Check:
    """The GPU's used memory at its highest over the run's processes against the plan's priced total
    plus its margin."""
    plans = [r["plan"] for r in results if r.get("plan")]
    if not plans:
        reason = next((r["plan_error"] for r in results if r.get("plan_error")), "no process reported a plan")
        return Check(name, False, f"the plan's prediction failed: {reason}")
    plan = max(plans, key=lambda p: p["priced"])
    priced, margin = plan["priced"] / 1e9, plan["margin"] / 1e9
    if cpu:
        return Check(name, True, f"--cpu dry run, GPU memory not measured; plan {priced:.3g} GB priced + "
                                 f"{margin:.3g} GB margin")
    peaks = [r for r in results if r.get("peak_bytes")]
    if not peaks:
        return Check(name, False, "no GPU memory measured")
    top = max(peaks, key=lambda r: r["peak_bytes"])
    peak = top["peak_bytes"] / 1e9
    text = (f"peak {peak:.2f} GB used ({top['peak_phase']}; {top['baseline_bytes'] / 1e9:.2f} GB before the run) "
            f"vs plan {priced:.2f} GB priced (engine share {plan['share']:.3f}) + {margin:.2f} GB margin: "
            f"{peak / priced:.3f} x priced, unpriced {peak - priced:+.2f} GB")
    ok = peak <= priced + margin
    return Check(name, ok, text if ok else f"{text}: above the plan")


def check_linear(results: list[dict]) -> Check:
    name = "zero3_linear"
    seen = [r.get("linear_untouched") for r in results if "linear_untouched" in r]
    if not seen:
        return Check(name, False, "not observed (the ZeRO-3 processes failed before their setup ended)")
    if not all(seen):
        return Check(name, False, "torch.nn.functional.linear was replaced beside the ZeRO-3 actor (DeepSpeed's "
                                  "memory_efficient_linear): the engine's linears run through DeepSpeed")
    return Check(name, True, f"torch.nn.functional.linear is torch's own once the ZeRO-3 actor and the engine are "
                             f"built and at the end of the run ({len(seen)} processes)")


def check_resume(info: dict, steps: int = STEPS) -> Check:
    """``info``: what the orchestrator saw of the kill and the restart (see :func:`resume_info`)."""
    name = "resume"
    problems = []
    if not info.get("held"):
        problems.append(f"the first process never reached step {HOLD_STEP}'s update ({info.get('held_error')})")
    if info.get("killed_returncode") != -signal.SIGKILL:
        problems.append(f"the first process ended with status {info.get('killed_returncode')}, not SIGKILL")
    if info.get("checkpoint_at_kill") != CHECKPOINT_EVERY:
        problems.append(f"newest complete checkpoint at the kill: {info.get('checkpoint_at_kill')}, "
                        f"expected step {CHECKPOINT_EVERY}")
    if info.get("start_step") != info.get("checkpoint_at_kill"):
        problems.append(f"the restart began at step {info.get('start_step')}, not at the checkpoint's")
    if info.get("metrics_steps") != list(range(1, steps + 1)):
        problems.append(f"metrics.csv steps {info.get('metrics_steps')}, expected each of 1..{steps} once")
    if info.get("final_step") != steps:
        problems.append(f"the restart's manifest says final step {info.get('final_step')}, expected {steps}")
    if info.get("checkpoint_problems"):
        problems.append(f"final checkpoint: {'; '.join(info['checkpoint_problems'])}")
    if problems:
        return Check(name, False, "; ".join(problems))
    return Check(name, True, f"SIGKILL in step {HOLD_STEP} after the step-{CHECKPOINT_EVERY} checkpoint; the restart "
                             f"resumed at step {info['start_step']} and ended at step {info['final_step']}; "
                             f"checkpoint step-{steps} verifies and loads ({info['loaded_params']:,} parameters) "
                             f"[{info['seconds']:.0f} s]")


def failed(names: list[str], reason: str) -> list[Check]:
    return [Check(n, False, reason) for n in names]
