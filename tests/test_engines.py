"""Rollout engines (transformers side): parameters, shapes, EOS handling, seeding, weight sharing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rsgrpo.prepare.loading import load_policy
from rsgrpo.train.engines import make_engine, resolve_engine_kind
from rsgrpo.train.engines.base import Completion, SamplingParams, encode_prompts, row_seed
from rsgrpo.train.engines.hf import HFEngine, _SeededSampler
from rsgrpo.train.engines.vllm import vllm_available


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return HFEngine(tiny_model_dir, batch_size=8)


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 0}, "n"), ({"n": 2.0}, "n"), ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": "1"}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"seed": 1.5}, "seed"),
    ({"min_tokens": -1}, "min_tokens"), ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
])
def test_sampling_params_validation(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}\b"):
        SamplingParams(**kwargs)


def test_sampling_params_defaults_and_frozen():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.max_tokens, p.seed, p.min_tokens) == (1, 1.0, 1.0, 256, 0, 0)
    SamplingParams(temperature=0)  # greedy is valid
    import numpy as np

    q = SamplingParams(n=np.int64(3), max_tokens=np.int32(8), temperature=np.float32(0.5))
    assert type(q.n) is int and type(q.max_tokens) is int and type(q.temperature) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n = 3  # type: ignore[misc]


def _check_completion(c: Completion, eos: int, max_tokens: int):
    assert 1 <= len(c.token_ids) <= max_tokens
    assert eos not in c.token_ids[:-1], "EOS must end a completion"
    assert c.finished == (c.token_ids[-1] == eos)
    if not c.finished:
        assert len(c.token_ids) == max_tokens


def test_generate_shapes_prompt_ids_and_text(engine):
    tok = engine.tokenizer
    prompts = [_chat(tok, "1+1?"), _chat(tok, "a much longer question about 12 * 7"), "plain prompt"]
    params = SamplingParams(n=3, max_tokens=20, seed=5)
    out = engine.generate(prompts, params)
    assert [len(row) for row in out] == [3, 3, 3]
    for prompt, row in zip(prompts, out):
        # Chat-templated strings already carry BOS: it must not be added a second time.
        assert all(c.prompt_token_ids == tok(prompt, add_special_tokens=False)["input_ids"] for c in row)
        for c in row:
            _check_completion(c, tok.eos_token_id, 20)
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)
    assert out[0][0].prompt_token_ids[0] == tok.bos_token_id
    assert out[0][0].prompt_token_ids.count(tok.bos_token_id) == 1


class _EosBias:
    """Forward hook on lm_head adding ``bias`` to the EOS logit, so completions end early."""

    def __init__(self, eos: int, bias: float):
        self.eos, self.bias = eos, bias

    def __call__(self, module, args, output):
        output = output.clone()
        output[..., self.eos] += self.bias
        return output


def test_completions_are_cut_after_first_eos(policy):
    model, tok = policy
    handle = model.lm_head.register_forward_hook(_EosBias(tok.eos_token_id, 2.0))
    try:
        eng = HFEngine(model=model, tokenizer=tok, batch_size=16)
        out = eng.generate([_chat(tok, "q1"), _chat(tok, "another question")],
                           SamplingParams(n=16, max_tokens=12, seed=0))
    finally:
        handle.remove()
    flat = [c for row in out for c in row]
    for c in flat:
        _check_completion(c, tok.eos_token_id, 12)
        assert "</s>" not in c.text
    lengths = {len(c.token_ids) for c in flat if c.finished}
    # Both outcomes occur, and finished completions have different lengths (rows of one batch that
    # stopped early were padded by generate: that padding must be gone).
    assert any(c.finished for c in flat) and any(not c.finished for c in flat)
    assert len(lengths) > 2


def test_seeding_is_deterministic_and_batch_independent(tiny_model_dir, engine):
    tok = engine.tokenizer
    prompts = [_chat(tok, "short"), _chat(tok, "a considerably longer prompt text"), "x"]
    params = SamplingParams(n=4, max_tokens=16, seed=11)
    a = engine.generate(prompts, params)
    b = HFEngine(tiny_model_dir, batch_size=3).generate(prompts, params)
    ids = lambda res: [[c.token_ids for c in row] for row in res]  # noqa: E731
    assert ids(a) == ids(b)
    # A prompt's samples do not depend on its batch neighbours (padding is masked correctly).
    alone = engine.generate([prompts[0]], params, seeds=[row_seed(11, 0)])
    with_other = engine.generate([prompts[1], prompts[0]], params, seeds=[7, row_seed(11, 0)])
    assert ids(alone)[0] == ids(with_other)[1]
    # Another seed gives other samples; samples of one prompt differ from each other.
    c = engine.generate(prompts, SamplingParams(n=4, max_tokens=16, seed=12))
    assert ids(a) != ids(c)
    assert len({tuple(t) for t in ids(a)[1]}) == 4


def test_finished_rows_leave_the_batch_and_no_row_changes(policy, monkeypatch):
    """Rows that have produced EOS are dropped from the decode batch (KV cache, mask, positions and
    sampler) once they are a quarter of it; every completion and its log-probs equal those of the
    same row decoded alone, where nothing is ever dropped."""
    from rsgrpo.train.engines import hf

    model, tok = policy
    kept: list[tuple[int, int]] = []
    real_keep = hf._keep_cache_rows

    def recording(cache, keep):
        kept.append((cache.layers[0].keys.shape[0], len(keep)))
        real_keep(cache, keep)

    monkeypatch.setattr(hf, "_keep_cache_rows", recording)
    prompts = [_chat(tok, "q"), _chat(tok, "a longer question about 3 + 4"), "plain"]
    params = SamplingParams(n=6, max_tokens=20, seed=5, top_p=0.9, logprobs=True)
    handle = model.lm_head.register_forward_hook(_EosBias(tok.eos_token_id, 1.0))
    try:
        together = HFEngine(model=model, tokenizer=tok, batch_size=18).generate(prompts, params)
        compactions = list(kept)
        alone = HFEngine(model=model, tokenizer=tok, batch_size=1).generate(prompts, params)
    finally:
        handle.remove()
    assert compactions and all(after < before for before, after in compactions), compactions
    lengths = {len(c.token_ids) for row in together for c in row}
    assert len(lengths) > 3  # rows ended at many different steps
    for row_together, row_alone in zip(together, alone):
        for a, b in zip(row_together, row_alone):
            assert a.token_ids == b.token_ids and a.finished == b.finished
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)


def test_greedy_matches_stepwise_argmax(policy, engine):
    model, tok = policy
    prompt = _chat(tok, "greedy?")
    out = engine.generate([prompt, "other"], SamplingParams(n=2, temperature=0, max_tokens=10))
    assert out[0][0].token_ids == out[0][1].token_ids
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ref = []
    with torch.no_grad():
        for _ in range(10):
            nxt = int(model(torch.tensor([ids + ref])).logits[0, -1].argmax())
            ref.append(nxt)
            if nxt == tok.eos_token_id:
                break
    assert out[0][0].token_ids == ref


class _SamplerAsProcessor:
    """The engine's sampler as a transformers logits processor, for ``generate`` as the reference."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, input_ids, scores):
        return self.sampler(scores)


@pytest.mark.parametrize("temperature, top_p, min_tokens, eos_bias", [
    (1.0, 1.0, 0, 2.0), (0.7, 0.9, 0, 0.5), (0.0, 1.0, 0, 0.0), (1.0, 1.0, 12, 2.0)])
def test_decode_loop_equals_transformers_generate(policy, temperature, top_p, min_tokens, eos_bias):
    """The engine's own decode loop (static KV cache, positions from the left padding, pad after
    EOS, EOS suppressed until min_tokens) picks exactly the tokens transformers ``generate`` picks
    with the same sampler, prompts of different lengths in one batch."""
    from transformers import GenerationConfig, LogitsProcessorList

    model, tok = policy
    eng = HFEngine(model=model, tokenizer=tok, batch_size=64)
    prompts = [_chat(tok, "q"), _chat(tok, "a much longer question about 12 * 7 + 3"), "plain"]
    params = SamplingParams(n=5, temperature=temperature, top_p=top_p, max_tokens=16, seed=3, min_tokens=min_tokens)
    handle = model.lm_head.register_forward_hook(_EosBias(tok.eos_token_id, eos_bias))
    try:
        ours = eng.generate(prompts, params)
        ids = encode_prompts(tok, prompts)
        seeds = eng._row_seeds(len(ids), params, None)
        rows = sorted([(i, j) for i in range(len(ids)) for j in range(params.n)], key=lambda r: -len(ids[r[0]]))
        width = max(map(len, ids))
        input_ids = torch.tensor([[eng.pad_id] * (width - len(ids[i])) + ids[i] for i, _ in rows])
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i, _ in rows])
        processors = LogitsProcessorList(
            [_SamplerAsProcessor(_SeededSampler([seeds[i][j] for i, j in rows], temperature, top_p))]
            if temperature > 0 else [])
        with torch.no_grad():
            ref = model.generate(input_ids=input_ids, attention_mask=mask, logits_processor=processors,
                                 generation_config=GenerationConfig(
                                     do_sample=False, max_new_tokens=16, min_new_tokens=min_tokens,
                                     eos_token_id=eng.eos_ids, pad_token_id=eng.pad_id, bos_token_id=None,
                                     temperature=None, top_p=None, top_k=None))
    finally:
        handle.remove()
    eos = tok.eos_token_id
    finished = 0
    for (i, j), row in zip(rows, ref[:, width:].tolist()):
        expected = row[:row.index(eos) + 1] if eos in row else row
        assert ours[i][j].token_ids == expected, (i, j)
        assert len(expected) >= min_tokens + (eos in row)
        finished += ours[i][j].finished
    if eos_bias:
        assert 0 < finished < len(rows)  # rows that stopped early and rows cut at max_tokens, in one batch


def test_seeded_sampler_matches_softmax_and_top_p():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    rows = 6000
    scores = logits.repeat(rows, 1)
    for temperature, top_p in [(1.0, 1.0), (0.5, 1.0), (1.0, 0.8)]:
        sampler = _SeededSampler([row_seed(3, i) for i in range(rows)], temperature, top_p)
        picks = sampler(scores).argmax(-1)
        freq = torch.bincount(picks, minlength=6).double() / rows
        probs = torch.softmax(logits.double() / temperature, -1)
        if top_p < 1.0:
            keep = (probs.cumsum(-1) - probs) < top_p  # sorted already: logits are descending
            probs = torch.where(keep, probs, torch.zeros_like(probs))
            probs /= probs.sum()
            assert freq[~keep].sum() == 0
        assert torch.allclose(freq, probs, atol=0.02), (temperature, top_p, freq, probs)


def test_shared_model_no_grad_and_training_mode_restored(policy):
    model, tok = policy
    seen = []
    handle = model.register_forward_hook(lambda m, a, o: seen.append((torch.is_grad_enabled(), m.training)))
    try:
        model.train()
        eng = make_engine("hf", model_dir="unused-when-model-given", model=model, tokenizer=tok)
        assert isinstance(eng, HFEngine) and eng.model is model
        eng.generate(["abc"], SamplingParams(n=2, max_tokens=4))
        assert model.training, "training mode must be restored"
        model.eval()
        eng.generate(["abc"], SamplingParams(n=1, max_tokens=2))
        assert not model.training, "eval mode must be kept"
    finally:
        handle.remove()
    assert seen and all(not grad and not training for grad, training in seen)
    assert all(p.grad is None for p in model.parameters())
    eng.load_weights(model)  # shared module: nothing to copy, must not fail


def test_load_weights_copies_into_own_model(tiny_model_dir, policy):
    eng = HFEngine(tiny_model_dir)
    params = SamplingParams(n=2, max_tokens=12, seed=4)
    before = eng.generate(["hello"], params)
    other, _ = load_policy(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    eng.load_weights(other)
    after = eng.generate(["hello"], params)
    assert [c.token_ids for c in before[0]] != [c.token_ids for c in after[0]]
    ref = HFEngine(model=other, tokenizer=eng.tokenizer).generate(["hello"], params)
    assert [c.token_ids for c in after[0]] == [c.token_ids for c in ref[0]]


def test_load_named_weights_streams_a_gathered_model(tiny_model_dir):
    """The ZeRO-3 refresh path: (name, tensor) pairs, aliases of tied weights included, as
    rsgrpo.train.distributed.zero_state.gathered_parameters yields them; missing or misshapen tensors are refused."""
    from rsgrpo.train.distributed.zero_state import gathered_parameters

    eng = HFEngine(tiny_model_dir)
    params = SamplingParams(n=2, max_tokens=12, seed=4)
    other, _ = load_policy(tiny_model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    eng.load_named_weights(gathered_parameters(other, bucket_numel=1000))
    for k, v in other.state_dict().items():
        assert torch.equal(eng.model.state_dict()[k], v), k
    ref = HFEngine(model=other, tokenizer=eng.tokenizer).generate(["hello"], params)
    assert [c.token_ids for c in eng.generate(["hello"], params)[0]] == [c.token_ids for c in ref[0]]
    items = list(other.state_dict().items())
    with pytest.raises(ValueError, match="no weights given for"):
        eng.load_named_weights(items[1:])
    with pytest.raises(ValueError, match="has shape"):
        eng.load_named_weights([(items[0][0], torch.zeros(3))])
    with pytest.raises(ValueError, match="no tensor 'nope'"):
        eng.load_named_weights([("nope", torch.zeros(3))])


class _RecordingTokenizer:
    bos_token = "<BOS>"

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens):
        self.calls.append(add_special_tokens)
        return {"input_ids": [1] * (len(text) + int(add_special_tokens))}


def test_prompt_tokenization_rule():
    tok = _RecordingTokenizer()
    encode_prompts(tok, ["<BOS>chat templated", "plain text"])
    assert tok.calls == [False, True]
    encode_prompts(tok, ["<BOS>x", "y"], add_special_tokens=False)
    assert tok.calls[2:] == [False, False]
    assert encode_prompts(tok, [[5, 6, 7]]) == [[5, 6, 7]]
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        encode_prompts(tok, [[]])


def test_make_engine_kinds(tiny_model_dir):
    with pytest.raises(ValueError, match=r"^engine must be one of auto, hf, vllm, got .tgi."):
        make_engine("tgi", model_dir=tiny_model_dir)
    with pytest.raises(ValueError, match="batch_size"):
        make_engine("hf", model_dir=tiny_model_dir, batch_size=0)
    if not torch.cuda.is_available():
        eng = make_engine("auto", model_dir=tiny_model_dir, kv_cache_memory_bytes=1 << 28)
        assert isinstance(eng, HFEngine)
    if not vllm_available():
        with pytest.raises(RuntimeError, match="vllm"):
            make_engine("vllm", model_dir=tiny_model_dir)


@pytest.mark.parametrize("vocab,rows,steps", [(103, 5, 70), (300_000, 3, 5)])
def test_seeded_sampler_draws_ahead_without_changing_any_sample(vocab, rows, steps):
    """Noise drawn in blocks (one torch.rand per row and block) equals the per-token draw of each
    row's generator: the same perturbed logits at every step, across block boundaries (70 steps
    with blocks of 64; a large vocabulary shrinks the block to stay in the noise budget)."""
    seeds = [11, 12, 13, 14, 15][:rows]
    sampler = _SeededSampler(seeds, temperature=0.7, top_p=1.0)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        u = torch.stack([torch.rand(vocab, generator=g) for g in generators])
        expected = scores / 0.7 - torch.log(-torch.log(u.clamp_(min=1e-38)))
        assert torch.equal(sampler(scores), expected)
    assert sampler.noise.shape[1] == min(64, (64 << 20) // (4 * rows * vocab))  # 64, and 18 for 300k


def test_engine_auto_never_falls_back_to_transformers_on_a_gpu_machine(tiny_model_dir, monkeypatch):
    """A GPU reported present and vLLM absent: `engine: auto` is an error naming the key and the
    package; an explicit `engine: hf` proceeds. Without a GPU, auto means transformers."""
    import sys

    assert resolve_engine_kind("auto") == ("vllm" if torch.cuda.is_available() and vllm_available() else "hf")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(RuntimeError, match=r"^engine: auto found a GPU but the package vllm does not import "
                                           r"\(ModuleNotFoundError.*pip install 'rsgrpo\[gpu\]'.*set engine: hf"):
        make_engine("auto", model_dir=tiny_model_dir)
    with pytest.raises(RuntimeError, match=r"^training\.engine: vllm, but the package vllm does not import"):
        make_engine("vllm", model_dir=tiny_model_dir, key="training.engine")
    with pytest.raises(ValueError, match=r"^engine must be one of auto, hf, vllm, got 'gpu'"):
        resolve_engine_kind("gpu")
    assert resolve_engine_kind("hf") == "hf"
    eng = make_engine("hf", model_dir=tiny_model_dir)
    assert isinstance(eng, HFEngine)
    out = eng.generate(["1+1"], SamplingParams(n=1, max_tokens=3))
    assert 1 <= len(out[0][0].token_ids) <= 3


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (1.0, 0.8)])
def test_logprobs_are_those_of_the_sampling_distribution(policy, engine, temperature, top_p):
    """Each returned log-prob is the sampled token's under the distribution it was drawn from: the
    model's logits over the temperature, renormalised over the nucleus with top_p < 1 (as vLLM's
    processed log-probs); none unless asked for."""
    model, tok = policy
    params = SamplingParams(n=2, temperature=temperature, top_p=top_p, max_tokens=8, seed=3)
    assert engine.generate(["Q: 2+2\nA:"], params)[0][0].logprobs is None
    out = engine.generate(["Q: 2+2\nA:", "other"], dataclasses.replace(params, logprobs=True))
    sampler = _SeededSampler([0], temperature, top_p)
    for group in out:
        for completion in group:
            assert len(completion.logprobs) == len(completion.token_ids) > 0
            ids = list(completion.prompt_token_ids)
            with torch.no_grad():
                for token, logp in zip(completion.token_ids, completion.logprobs):
                    processed = sampler.processed(model(torch.tensor([ids])).logits[0, -1:].float())
                    assert logp == pytest.approx(float(torch.log_softmax(processed, -1)[0, token]), abs=1e-5)
                    ids.append(token)


def test_generation_stops_between_batches_when_asked(engine, monkeypatch):
    """``should_stop`` is asked before every batch: once it says True the engine raises instead of
    decoding the rest (a time-limit warning costs a checkpoint, not a generation round)."""
    from rsgrpo.train.engines.base import GenerationAbandoned

    decoded = []
    real = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda *a: (decoded.append(1), real(*a))[1])
    params = SamplingParams(n=4, temperature=1.0, max_tokens=4, seed=1)  # 5 prompts x 4 = 20 rows, 3 batches of 8
    asked = []
    with pytest.raises(GenerationAbandoned):
        engine.generate([f"p{i}" for i in range(5)], params, should_stop=lambda: asked.append(1) or len(asked) > 1)
    assert len(decoded) == 1 and len(asked) == 2
    out = engine.generate([f"p{i}" for i in range(5)], params, should_stop=lambda: False)
    assert len(decoded) == 4 and len(out) == 5
