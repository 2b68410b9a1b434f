"""One training process of scripts/gpu_check.py: a Trainer built in-process, with the checks' hooks.

    python scripts/gpu_check_worker.py SPEC.json

``SPEC``: ``config`` (the TrainConfig mapping), ``out`` (where the result JSON goes) and the hooks:

* ``speed``: after setup, the rollout engine's generated tokens/s next to raw ``vllm.LLM.generate``
  on the same engine (unseeded, like the trainer's requests), best of two alternating rounds each;
* ``stale_step`` (1-based): the weight push before that step hands the engine a copy of the weights it
  already had (taken before the update, on the host), so that step generates one update behind;
* ``hold_step`` (1-based): in that step's update, write the result and ``marker``, then wait to be
  killed (the orchestrator SIGKILLs the process there);
* ``own_engine_copy`` (--cpu): a transformers engine with its own copy of the weights, so that a push
  (and a stale one) means something, as it does for vLLM.

Always: the GPU's used memory at its highest (polled every 10 ms once the trainer is set up) and the
trainer's phase then, the plan's prediction for the same job (``rsgrpo.capacity``), whether
torch.nn.functional.linear is still torch's own, and the step the run started at. A failure is
written as ``{"ok": false, "error": ...}``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import gpu_check  # noqa: E402

TORCH_LINEAR = F.linear  # before DeepSpeed is imported


class PeakMemory:
    """The GPU's used memory (``cudaMemGetInfo``: what the driver has handed out, which vLLM's sleep mode
    really returns) at its highest, with the phase the process was in; inert without a GPU. Sampled at
    every phase boundary, and polled every ``interval`` seconds from :meth:`start` on: not during the
    trainer's setup, where vLLM captures CUDA graphs (a CUDA call from another thread can invalidate a
    capture in CUDA's global capture mode)."""

    def __init__(self, interval: float = 0.01):
        self.phase, self.peak, self.peak_phase = "start", 0, ""
        self.interval, self.polling = interval, False
        self.enabled = torch.cuda.is_available()
        self.baseline = self.sample() if self.enabled else 0

    def start(self) -> None:
        if self.enabled and not self.polling:
            self.polling = True
            threading.Thread(target=self._poll, daemon=True).start()

    def sample(self) -> int:
        if not self.enabled:
            return 0
        free, total = torch.cuda.mem_get_info()
        used = total - free
        if used > self.peak:
            self.peak, self.peak_phase = used, self.phase
        return used

    def _poll(self) -> None:
        while True:
            self.sample()
            time.sleep(self.interval)

    def phased(self, name: str, fn):
        """``fn`` with the phase set to ``name`` while it runs."""

        def wrapped(*args, **kwargs):
            outer, self.phase = self.phase, name
            self.sample()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sample()
                self.phase = outer

        return wrapped

    def report(self) -> dict:
        if not self.enabled:
            return {}
        self.sample()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        # torch's own peak, for reference only: it counts a sleeping vLLM engine's unmapped memory
        return {"peak_bytes": self.peak, "peak_phase": self.peak_phase, "baseline_bytes": self.baseline,
                "gpu_bytes": props.total_memory, "device": props.name,
                "torch_max_allocated_bytes": torch.cuda.max_memory_allocated()}


def engine_share(engine) -> float | None:
    """The GPU share (``gpu_memory_utilization``) of a vLLM engine; None for another engine."""
    llm = getattr(engine, "llm", None)
    if llm is None:
        return None
    return float(llm.llm_engine.vllm_config.cache_config.gpu_memory_utilization)


def capacity_module():
    """The plan's arithmetic (``rsgrpo.capacity``)."""
    from rsgrpo import capacity

    return capacity


def plan_memory(trainer, share: float | None) -> dict:
    """The plan's bytes per GPU of this job: ``priced`` (``train_memory``'s total, the engine at the
    share it actually has) and ``margin`` (what the plan leaves for what it does not price)."""
    from rsgrpo.train.engines.base import encode_prompts

    capacity = capacity_module()
    cfg = trainer.cfg
    prompt = max(len(ids) for ids in encode_prompts(trainer.actor.tokenizer, trainer.prompts))
    shape = capacity.model_shape(json.loads((Path(cfg.model_dir) / "config.json").read_text()))
    job = capacity.train_job(cfg, ranks=trainer.dist.world_size, prompt_tokens=prompt)
    gpu = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else 0
    engine = (share or 0.0) * gpu
    memory = capacity.train_memory(shape, job, engine_bytes=engine, kl_reference=cfg.kl_coef > 0)
    return {"priced": memory["total"], "margin": float(getattr(capacity, "MARGIN_BYTES", 0.0)), "share": share or 0.0,
            "components": memory, "prompt_tokens": prompt, "params": shape.params}


def measure_speed(trainer, spec: dict) -> dict:
    """Generated tokens/s of the trainer's engine (as the trainer calls it: one request per completion,
    unseeded on vLLM, with log-probs) and of raw vLLM on the same engine (n samples per request, no
    seed, the sampled tokens' log-probs); the best of two alternating rounds each."""
    from rsgrpo.train.engines.base import SamplingParams, encode_prompts

    engine, cfg = trainer.engine, trainer.cfg
    prompts = trainer.prompts[: spec["prompts"]]
    params = SamplingParams(n=spec["samples"], temperature=cfg.temperature, top_p=cfg.top_p,
                            max_tokens=spec["max_new"], seed=cfg.seed, logprobs=True)

    def ours() -> int:
        return sum(len(c.token_ids) for row in engine.generate(prompts, params) for c in row)

    runs = {"ours": ours}
    if getattr(engine, "llm", None) is not None:
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=ids)
                    for ids in encode_prompts(engine.tokenizer, prompts, engine.add_special_tokens)]
        raw_params = VLLMParams(n=spec["samples"], temperature=cfg.temperature, top_p=cfg.top_p,
                                max_tokens=spec["max_new"], logprobs=0, detokenize=False)

        def raw() -> int:
            return sum(len(c.token_ids) for out in engine.llm.generate(requests, raw_params, use_tqdm=False)
                       for c in out.outputs)

        runs["raw"] = raw
    best: dict[str, tuple[float, int]] = {}
    for _ in range(2):
        for side, run in runs.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            started = time.perf_counter()
            tokens = run()
            seconds = time.perf_counter() - started
            if side not in best or seconds < best[side][0]:
                best[side] = (seconds, tokens)
    out = {"engine": engine.describe(), "ours_tokens": best["ours"][1],
           "ours_tokens_per_s": best["ours"][1] / best["ours"][0], "raw_tokens": None, "raw_tokens_per_s": None}
    if "raw" in best:
        out.update(raw_tokens=best["raw"][1], raw_tokens_per_s=best["raw"][1] / best["raw"][0])
    return out


def build_trainer(spec: dict):
    from rsgrpo.train.config import compute_dtype, from_dict
    from rsgrpo.train.trainer import Trainer

    gpu_check.register_reward()
    cfg = from_dict(spec["config"], "gpu_check")
    factory = None
    if spec.get("own_engine_copy"):
        from rsgrpo.train.engines import make_engine

        def factory(model, tokenizer, source):  # not the trainer's module: a push copies weights into it
            return make_engine("hf", model_dir=source, tokenizer=tokenizer, dtype=compute_dtype(cfg),
                               batch_size=cfg.hf_batch_size)

    return Trainer(cfg, engine_factory=factory)


def run(spec: dict, result: dict, memory: PeakMemory) -> None:
    trainer = build_trainer(spec)
    out = Path(spec["out"])

    def setup(original=trainer.setup):
        original()
        memory.start()
        result["start_step"] = trainer.start_step
        result["linear_untouched"] = F.linear is TORCH_LINEAR
        result["engine"] = trainer.engine.describe()
        try:
            result["plan"] = plan_memory(trainer, engine_share(trainer.engine))
        except Exception as exc:  # the plan's interface: reported by the memory check, not fatal
            result["plan_error"] = f"{type(exc).__name__}: {exc}"
        if spec.get("speed"):
            try:
                result["speed"] = memory.phased("speed", measure_speed)(trainer, spec["speed"])
            except Exception as exc:  # reported by the speed check; the training checks go on
                traceback.print_exc()
                result["speed"] = {"error": f"{type(exc).__name__}: {exc}"}

    def update(rollout, original=trainer.update):
        step = rollout.step + 1
        if spec.get("hold_step") == step:
            result.update(memory.report(), held_at=step, ok=True)
            out.write_text(json.dumps(result))
            Path(spec["marker"]).write_text(str(step))
            time.sleep(3600)  # killed here
            raise RuntimeError(f"not killed within an hour of holding in step {step}")
        if spec.get("stale_step") != step + 1:
            return original(rollout)
        # this update's push hands the engine the weights it already has: the next step generates stale
        actor = trainer.actor
        held = {name: tensor.detach().to("cpu", copy=True) for name, tensor in actor.model.state_dict().items()}
        device = next(actor.model.parameters()).device

        def stale_sync(engine):  # back on the device one tensor at a time, as a push hands them over
            engine.load_named_weights((name, tensor.to(device)) for name, tensor in held.items())
            result["stale_pushed"] = True

        actor.sync_engine = stale_sync
        try:
            return original(rollout)
        finally:
            del actor.sync_engine  # the class's method again

    trainer.setup = memory.phased("setup", setup)
    trainer.collect = memory.phased("generate", trainer.collect)
    trainer.update = memory.phased("update", update)
    trainer.push_weights = memory.phased("push", trainer.push_weights)
    trainer.save = memory.phased("checkpoint", trainer.save)
    trainer.run()
    result["linear_untouched"] = result.get("linear_untouched", True) and F.linear is TORCH_LINEAR


def main(spec_path: str) -> int:
    from rsgrpo.train.distributed.collectives import die_with_parent

    die_with_parent()  # the orchestrator's death (an interrupt, a kill) ends this process too
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    memory = PeakMemory()
    result: dict = {"ok": False}
    try:
        run(spec, result, memory)
        result["ok"] = True
    except BaseException as exc:  # every failure becomes the result the orchestrator reads
        traceback.print_exc()
        result.update(ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:800]}")
    result.update(memory.report())
    Path(spec["out"]).write_text(json.dumps(result, default=str))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if result["ok"] else 1)  # no interpreter teardown: vLLM and NCCL can hang in it


if __name__ == "__main__":
    main(sys.argv[1])
