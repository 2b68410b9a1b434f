"""The transformers rollout engine: CPU runs, tests, and the reference the vLLM engine is checked against.

Why its own decode loop and sampler: a completion must depend on its prompt, the weights and its
own seed only, not on its batch neighbours (see :mod:`rsgrpo.train.engines.base`); transformers'
``generate`` samples every row from one global RNG.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from rsgrpo.train.engines.base import (
    Completion,
    GenerationAbandoned,
    RolloutEngine,
    SamplingParams,
    cut_at_eos,
    device_name,
    encode_prompts,
    eos_token_ids,
)


class _SeededSampler:
    """Seeded per-row sampling by argmax: the argmax of the returned scores is the sampled token.

    Temperature and nucleus (top-p) filtering are applied, then Gumbel noise drawn from each row's
    own ``torch.Generator``; the argmax of the perturbed logits is an exact sample from the
    filtered distribution. Why not transformers' ``do_sample=True``: it samples all rows from the
    global RNG, so a completion would depend on its batch neighbours and on ``batch_size``.
    """

    # Gumbel noise is drawn ahead for several tokens per row (one ``torch.rand`` per row and block, not
    # per row and token): a generator's numbers come out in the same order either way, so the samples
    # are the same; the block shrinks so the noise of a batch stays under NOISE_BUDGET_BYTES.
    MAX_BLOCK = 64
    NOISE_BUDGET_BYTES = 64 << 20

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.noise: torch.Tensor | None = None  # [rows, block, vocab] Gumbel noise drawn ahead
        self.next_token = 0  # index into the block

    def _gumbel(self, vocab: int) -> torch.Tensor:
        """The next token's Gumbel noise of every row, ``[rows, vocab]``."""
        if self.noise is None or self.next_token == self.noise.shape[1]:
            rows = len(self.generators)
            block = max(1, min(self.MAX_BLOCK, self.NOISE_BUDGET_BYTES // (4 * rows * vocab)))
            u = torch.stack([torch.rand(block, vocab, generator=g) for g in self.generators])
            self.noise = -torch.log(-torch.log(u.clamp_(min=1e-38)))  # float32 uniforms: u in [0, 1)
            self.next_token = 0
        self.next_token += 1
        return self.noise[:, self.next_token - 1]

    def processed(self, scores: torch.Tensor) -> torch.Tensor:
        """The logits of the distribution a token is sampled from: temperature, then nucleus filtering."""
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
            drop_sorted = (probs.cumsum(-1) - probs) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Go on with the rows ``keep`` (indices into the current rows) only: their generators and
        the noise already drawn for them (each row's noise sequence is unchanged)."""
        self.generators = [self.generators[int(i)] for i in keep]
        if self.noise is not None:
            self.noise = self.noise[keep.to(self.noise.device)]

    def perturb(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed logits plus each row's Gumbel noise: the argmax is the sampled token."""
        return logits + self._gumbel(logits.shape[-1]).to(logits.device)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return self.perturb(self.processed(scores))


def _keep_cache_rows(cache, keep: torch.Tensor) -> None:
    """Keep the batch rows ``keep`` of every layer of a transformers ``StaticCache`` (its layers fill
    their ``keys`` / ``values`` in place, whatever their batch size)."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]


class HFEngine(RolloutEngine):
    """Rollouts with a transformers model (CPU or a single GPU).

    With ``model=`` the engine shares the trainer's module (no copy): ``load_weights`` is then a no-op
    and generation runs under ``torch.no_grad()`` in eval mode, restoring the module's training mode
    afterwards. Without it, the engine loads its own copy from ``model_dir`` and ``load_weights``
    copies a state dict into it.

    Decoding is this engine's own loop over the model's forward (:meth:`_decode`), not transformers
    ``generate``: the same forward calls and token choices (tests compare the two token for token)
    without ``generate``'s per-token bookkeeping, and with a KV cache allocated once per batch
    (``StaticCache``) instead of grown by concatenation at every token.
    """

    def __init__(self, model_dir: str | Path | None = None, *, model: torch.nn.Module | None = None,
                 tokenizer=None, dtype: str = "float32", batch_size: int = 64,
                 add_special_tokens: bool | None = None, device: str | None = None):
        from rsgrpo.prepare.loading import load_policy, load_tokenizer

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if model is None and model_dir is None:
            raise ValueError("HFEngine needs model_dir or model")
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        if model is not None:
            self.model, self.shared = model, True
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_dir)
        else:
            self.model, tok = load_policy(model_dir, dtype=dtype, device=device or "cpu")
            self.shared = False
            self.tokenizer = tokenizer if tokenizer is not None else tok
        self.eos_ids = eos_token_ids(self.tokenizer, getattr(self.model, "generation_config", None))
        if not self.eos_ids:
            raise ValueError("tokenizer/model define no EOS token; completions could never finish")
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        import transformers

        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return f"hf (transformers {transformers.__version__}), device {device_name(self.device)}, dtype {dtype}"

    def load_weights(self, model: torch.nn.Module) -> None:
        if model is self.model:
            return
        self.model.load_state_dict(model.state_dict())

    def load_named_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        own = self.model.state_dict()
        seen = set()
        with torch.no_grad():
            for name, tensor in weights:
                if name not in own:
                    raise ValueError(f"load_named_weights: the engine's model has no tensor {name!r}")
                if tuple(own[name].shape) != tuple(tensor.shape):
                    raise ValueError(f"load_named_weights: {name} has shape {tuple(tensor.shape)}, "
                                     f"the engine's model {tuple(own[name].shape)}")
                own[name].copy_(tensor)
                seen.add(name)
        missing = [k for k in own if k not in seen]
        if missing:
            raise ValueError(f"load_named_weights: no weights given for {missing[:5]}")

    def generate(self, prompts, params: SamplingParams, *, seeds=None, should_stop=None) -> list[list[Completion]]:
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        prompt_ids = encode_prompts(self.tokenizer, prompts, self.add_special_tokens)
        seeds_ij = self._row_seeds(len(prompt_ids), params, seeds)
        rows = [(i, j) for i in range(len(prompt_ids)) for j in range(params.n)]
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompt_ids]
        eos = set(self.eos_ids)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                # Longest prompts first: batches of similar length waste less compute on padding.
                order = sorted(rows, key=lambda r: -len(prompt_ids[r[0]]))
                for start in range(0, len(order), self.batch_size):
                    if should_stop is not None and should_stop():
                        raise GenerationAbandoned(f"stopped before batch {start // self.batch_size + 1}")
                    batch = order[start:start + self.batch_size]
                    seqs = [prompt_ids[i] for i, _ in batch]
                    width = max(len(s) for s in seqs)
                    input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(seqs), width), dtype=torch.long)
                    for r, s in enumerate(seqs):
                        input_ids[r, width - len(s):] = torch.tensor(s)
                        mask[r, width - len(s):] = 1
                    sampler = None
                    if params.temperature > 0:
                        sampler = _SeededSampler([seeds_ij[i][j] for i, j in batch], params.temperature, params.top_p)
                    new, logps = self._decode(input_ids.to(self.device), mask.to(self.device), sampler, params)
                    logps = logps.tolist() if logps is not None else [None] * len(batch)
                    for (i, j), ids, token_logps in zip(batch, new.tolist(), logps):
                        toks, finished = cut_at_eos(ids, eos, params.max_tokens)
                        text = self.tokenizer.decode(toks, skip_special_tokens=True)
                        results[i][j] = Completion(list(prompt_ids[i]), toks, text, finished,
                                                   None if token_logps is None else token_logps[:len(toks)])
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _decode(self, input_ids: torch.Tensor, mask: torch.Tensor, sampler: _SeededSampler | None,
                params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New token ids ``[rows, <= max_tokens]`` of a left-padded batch (``pad_id`` after a row's
        EOS) and, with ``params.logprobs``, each token's log-prob under the distribution it was
        sampled from (float32, same shape; None otherwise).

        Positions count real tokens only (a left-padded row starts at position 0, as if unpadded);
        the loop stops when every row has produced an EOS. Finished rows leave the batch (the KV cache,
        the mask, the positions and the sampler keep the live rows only) once they are a quarter of
        it: with completion lengths that vary 10-100x most of a fixed batch would otherwise decode
        rows that have ended. A row's computation never involves its neighbours; like any other batch
        size, a smaller batch may only round differently in the last bit of a logit.
        """
        from transformers import StaticCache

        rows, width = input_ids.shape
        device = input_ids.device
        cache = StaticCache(config=self.model.config.get_text_config(decoder=True),
                            max_cache_len=width + params.max_tokens)
        full_mask = torch.cat([mask, mask.new_ones(rows, params.max_tokens)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        eos = torch.tensor(self.eos_ids, device=device)
        out = torch.full((rows, params.max_tokens), self.pad_id, dtype=torch.long, device=device)
        out_logps = torch.zeros((rows, params.max_tokens), dtype=torch.float32, device=device) \
            if params.logprobs else None
        live = torch.arange(rows, device=device)  # the batch row of each row still decoding
        done = torch.zeros(rows, dtype=torch.bool, device=device)  # of the live rows
        step_ids = input_ids
        for t in range(params.max_tokens):
            logits = self.model(input_ids=step_ids, attention_mask=full_mask[:, :width + t], position_ids=positions,
                                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            if t < params.min_tokens:
                logits[:, eos] = float("-inf")
            processed = sampler.processed(logits) if sampler is not None else logits
            scores = sampler.perturb(processed) if sampler is not None else processed
            token = scores.argmax(-1).masked_fill_(done, self.pad_id)
            out[live, t] = token
            if out_logps is not None:
                out_logps[live, t] = torch.log_softmax(processed, dim=-1).gather(-1, token[:, None]).squeeze(-1)
            done |= torch.isin(token, eos)
            finished = int(done.sum())
            if finished == len(live):
                return out[:, :t + 1], (out_logps[:, :t + 1] if out_logps is not None else None)
            if 4 * finished >= len(live):
                keep = (~done).nonzero().squeeze(1)
                live, token, full_mask, positions = live[keep], token[keep], full_mask[keep], positions[keep]
                done = done[keep]
                _keep_cache_rows(cache, keep)
                if sampler is not None:
                    sampler.keep_rows(keep)
            step_ids = token[:, None]
            positions = positions[:, -1:] + 1
        return out, out_logps

    def close(self) -> None:
        if not self.shared:
            self.model = None  # type: ignore[assignment]
            gc.collect()
