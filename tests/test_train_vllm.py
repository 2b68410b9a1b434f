"""ZeRO-3 and vLLM in one process (optional tier: ``make test-vllm``): what a GPU rank runs, on CPU.

A Trainer with ``zero_stage: 3`` (one gloo rank) and ``engine: vllm`` builds its actor under
``deepspeed.zero.Init`` next to an in-process vLLM engine, trains two steps and refreshes the engine
from the bucket-by-bucket gather after each update. Checks: torch's linear is still torch's own
after the actor is built (DeepSpeed's ``memory_efficient_linear`` would replace it for the engine
too), the run ends with its two metric rows and checkpoint, and after every refresh the engine
computes what transformers computes with the trainer's weights of that moment. The same with LoRA
(under ZeRO-3 and without ZeRO): the engine gets the merged weights.
"""

from __future__ import annotations

import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
try:
    import vllm  # noqa: F401
except Exception as exc:  # ImportError, or a broken backend (e.g. CUDA torchvision on CPU torch)
    pytest.skip(f"vllm is not importable here ({type(exc).__name__}: {exc}); run `make test-vllm`",
                allow_module_level=True)
try:
    import deepspeed  # noqa: F401
except Exception as exc:
    pytest.skip(f"deepspeed is not importable next to vllm ({type(exc).__name__}: {exc}): a vLLM venv built "
                "before the Makefile installed it; rebuild it with `rm .venv-vllm/.installed-stamp; make test-vllm`",
                allow_module_level=True)

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from vllm_helpers import hf_prompt_logprobs, vllm_prompt_logprobs  # noqa: E402

from rsgrpo.prepare.loading import load_policy  # noqa: E402
from rsgrpo.train import checkpoint as ckpt  # noqa: E402
from rsgrpo.train.config import from_dict  # noqa: E402
from rsgrpo.train.engines.base import SamplingParams  # noqa: E402
from rsgrpo.train.engines.hf import HFEngine  # noqa: E402
from rsgrpo.train.engines.vllm import VLLMEngine  # noqa: E402
from rsgrpo.train.rewards import register  # noqa: E402
from rsgrpo.train.trainer import Trainer  # noqa: E402

LINEAR = torch.nn.functional.linear  # torch's own, before anything of DeepSpeed ran
KV_CACHE = 256 << 20  # 256 MiB: enough for the tiny model; without it vLLM-CPU takes ~15 GiB
RECORDS = [{"id": f"p{i}", "problem": f"Compute {i} * 3.", "answer": str(3 * i)} for i in range(4)]
PROBE = "Q: Compute 7 * 3.\nA: 21"


@register("test_train_vllm_has_digit")
def has_digit(*, completions, answers, problems, records):
    """A reward the random tiny model earns, so the updates are real."""
    return [1.0 if any(ch.isdigit() for ch in text) else 0.0 for text in completions]


class ProbedTrainer(Trainer):
    """Records, after setup and after every weight push, what the engine computes for a fixed text
    and the trainer's full weights of that moment (a collective gather, copied to the host)."""

    def setup(self) -> None:
        super().setup()
        self.probe_ids = self.actor.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        self.seen = {"linear_is_torch": torch.nn.functional.linear is LINEAR, "engine": type(self.engine),
                     "before": vllm_prompt_logprobs(self.engine, self.probe_ids), "pushes": []}

    def push_weights(self) -> None:
        super().push_weights()
        weights = dict(self.actor.full_weights(to_host=True))
        greedy = self.engine.generate([PROBE[:-3]], SamplingParams(n=1, temperature=0, max_tokens=8))[0][0].token_ids
        self.seen["pushes"].append((vllm_prompt_logprobs(self.engine, self.probe_ids), greedy, weights))


# LoRA: the engine gets the merged weights (base + adapters) at every refresh, gathered under ZeRO-3 or
# read from the module without ZeRO (the vLLM engine never shares the actor's module)
LORA = {"rank": 4, "alpha": 8, "target_modules": "all-linear"}


@pytest.mark.parametrize("zero_stage,lora,lr", [(3, None, 1e-3), (3, LORA, 1e-2), (0, LORA, 1e-2)],
                         ids=["full-zero3", "lora-zero3", "lora-zero0"])
def test_a_zero3_actor_and_a_vllm_engine_train_in_one_process(tiny_model_dir, tmp_path, zero_stage, lora, lr):
    cfg = from_dict(dict(model_dir=str(tiny_model_dir), steps=2, prompts_per_step=2, samples_per_prompt=4,
                         max_new_tokens=8, lr=lr, micro_batch_size=4, ppo_epochs=1, seed=3, progress=False,
                         zero_stage=zero_stage, engine="vllm", engine_options={"kv_cache_memory_bytes": KV_CACHE},
                         reward_kind="test_train_vllm_has_digit", dynamic_sampling=False, checkpoint_every=0,
                         logging=[], lora=lora))
    trainer = ProbedTrainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:")
    trainer.run()
    seen = trainer.seen
    assert seen["linear_is_torch"] and seen["engine"] is VLLMEngine
    assert torch.nn.functional.linear is LINEAR
    # vLLM's shutdown destroys torch's default group unless told not to: the trainer's must survive the
    # engine's close (the run's final barrier, the next run in this process)
    assert torch.distributed.is_initialized()
    assert [row["step"] for row in trainer.metrics] == [1, 2]
    assert all(row["loss"] == row["loss"] for row in trainer.metrics)  # both steps updated (no NaN)
    # vLLM's log-probs of the sampled tokens against the ZeRO-3 actor's: fp32 on both sides, a kernel-
    # rounding gap, measured at both steps (after setup and after the first push), far under the bound
    for row in trainer.metrics:
        assert 0 <= row["mismatch_k3"] < 1e-6 and row["mismatch_abs_max"] < 1e-3, row
    assert len(seen["pushes"]) == 2
    reference, tok = load_policy(tiny_model_dir)
    hf = HFEngine(model=reference, tokenizer=tok, batch_size=4)
    previous = seen["before"]
    for logprobs, greedy, weights in seen["pushes"]:
        assert "lm_head.weight" in weights  # the tied head's alias reaches the engine too
        reference.load_state_dict(weights)
        # the engine computes what the trainer's weights of that moment compute, and they moved
        torch.testing.assert_close(logprobs, hf_prompt_logprobs(reference, trainer.probe_ids), rtol=0, atol=1e-5)
        assert (logprobs - previous).abs().max() > 1e-4
        assert greedy == hf.generate([PROBE[:-3]], SamplingParams(n=1, temperature=0, max_tokens=8))[0][0].token_ids
        previous = logprobs
    # the final checkpoint (written by the ZeRO-3 gather, host copies) holds the last pushed weights
    saved = load_file(ckpt.latest_checkpoint(tmp_path / "run")[1] / "model.safetensors")
    last = seen["pushes"][-1][2]
    assert set(saved) <= set(last) and all(torch.equal(saved[k], last[k]) for k in saved)
    if lora is not None:  # merged weights: every adapted layer moved, the base model's own never did
        base = load_file(tiny_model_dir / "model.safetensors")
        assert set(saved) == set(base)
        moved = {k for k in saved if not torch.equal(saved[k], base[k])}
        assert moved and all(k.endswith("_proj.weight") for k in moved)
        frozen = {n for n, p in trainer.actor.model.named_parameters() if not p.requires_grad}
        assert frozen and all(".lora_" not in n for n in frozen)


def test_a_vllm_engine_left_with_stale_weights_stops_the_run_within_one_step(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    """The failure a missed push after sleep mode causes in a peer: the engine keeps generating with the
    initial weights. The mismatch bound stops the run at the first step after the first update."""
    from rsgrpo.train import actor as actor_mod
    from rsgrpo.train.mismatch import RolloutMismatchError

    monkeypatch.setattr(actor_mod.Actor, "sync_engine", lambda self, engine: None)
    cfg = from_dict(dict(model_dir=str(tiny_model_dir), steps=3, prompts_per_step=2, samples_per_prompt=4,
                         max_new_tokens=8, lr=3e-2, micro_batch_size=8, seed=3, progress=False, engine="vllm",
                         engine_options={"kv_cache_memory_bytes": KV_CACHE}, reward_kind="test_train_vllm_has_digit",
                         dynamic_sampling=False, checkpoint_every=0, logging=[], mismatch_max_k3=0.01))
    trainer = Trainer(cfg, tmp_path / "run", records=RECORDS, prompt_fn=lambda p: f"Q: {p}\nA:")
    with pytest.raises(RolloutMismatchError, match="step 1: .*stale weights"):
        trainer.run()
    assert [row["step"] for row in trainer.metrics] == [1] and trainer.metrics[0]["mismatch_k3"] < 1e-6
