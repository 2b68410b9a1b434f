"""Helpers of the vLLM tier (``make test-vllm``): the log-probs vLLM and transformers assign to a
prompt's tokens, to compare an engine's weights with a module's."""

from __future__ import annotations

import torch


def vllm_prompt_logprobs(vl, ids) -> torch.Tensor:
    """Log-probabilities vLLM assigns to each prompt token after the first (prompt_logprobs=0)."""
    from vllm import SamplingParams as VSamplingParams
    from vllm.inputs import TokensPrompt

    out = vl.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                          VSamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)[0]
    return torch.tensor([next(iter(d.values())).logprob for d in out.prompt_logprobs[1:]])


def hf_prompt_logprobs(model, ids) -> torch.Tensor:
    """The same log-probabilities under a transformers model."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return logp[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
