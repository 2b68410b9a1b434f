"""The log-prob computation of the update: chunked over completion positions only, equal to the
naive full-vocabulary computation, and far lighter at paper-like lengths."""

import pytest
import torch
from peak_memory import logprob_peaks_mb

from rsgrpo.train.loss import build_batch, naive_token_logprobs, token_logprobs


def tiny_lm(vocab: int = 97, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def random_pairs(vocab: int, lengths: list[tuple[int, int]], seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    def tokens(n):
        return torch.randint(1, vocab, (n,), generator=gen).tolist()

    return [(tokens(p), tokens(c)) for p, c in lengths]


@pytest.mark.parametrize("chunk", [None, 1, 3, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_and_entropy_equal_the_naive_ones(chunk, temperature):
    model = tiny_lm()
    batch = build_batch(random_pairs(97, [(5, 9), (2, 14), (11, 1), (1, 6)]), pad_id=0)
    mask = batch.completion_mask[:, 1:]
    logp, entropy = token_logprobs(model, batch, temperature, with_entropy=True, chunk_tokens=chunk)
    ref_logp, ref_entropy = naive_token_logprobs(model, batch, temperature, with_entropy=True)
    torch.testing.assert_close(logp, ref_logp * mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy * mask, rtol=0, atol=1e-5)
    assert (logp[mask == 0] == 0).all() and entropy.requires_grad is False
    # gradients of a weighted sum equal too (each chunk is recomputed in the backward pass)
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(2)) * mask
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad((logp * weights).sum(), params)
    ref_grads = torch.autograd.grad((naive_token_logprobs(model, batch, temperature)[0] * weights).sum(), params)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_a_batch_without_completion_tokens_still_reaches_every_weight():
    """A rank's padding micro-batch: zero log-probs, but a backward that gives every weight a (zero)
    gradient, because with several ranks every backward is a collective."""
    model = tiny_lm()
    batch = build_batch([([3], [4])], pad_id=0)
    batch.completion_mask.zero_()
    logp, _ = token_logprobs(model, batch, chunk_tokens=4)
    assert logp.abs().sum() == 0
    logp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in model.parameters())


def test_generation_still_sees_the_plain_output_layer():
    model = tiny_lm()
    batch = build_batch(random_pairs(97, [(4, 4)]), pad_id=0)
    before = model(input_ids=batch.input_ids).logits
    token_logprobs(model, batch, chunk_tokens=2)  # installs the chunked entry point on the head
    torch.testing.assert_close(model(input_ids=batch.input_ids).logits, before)


def test_chunked_logprobs_peak_memory_is_at_least_3x_lower():
    """One micro-batch of B 4 x L 2048 with a 32k vocabulary, forward and backward: the naive path
    holds [B, L, V] float32 logits and their log-softmax, the chunked one a chunk of them."""
    naive, chunked = logprob_peaks_mb()
    print(f"peak MB: naive {naive:.0f}, chunked {chunked:.0f}, ratio {naive / chunked:.1f}")
    assert naive > 1500  # the [4, 2048, 32000] float32 logits alone are 1 GB
    assert naive >= 3 * chunked
