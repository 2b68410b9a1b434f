"""The tiny model: a character-level tokenizer and a small random Qwen2 causal LM.

Why it exists: tests, the offline demo and the miniature experiment (:mod:`rsgrpo.prepare.pretrain`)
need a real checkpoint that transformers and vLLM load like any other and that generates in
milliseconds on a CPU. Model source ``tiny`` (:mod:`rsgrpo.prepare.model_sources`) writes one;
the plan reads its shape from :func:`tiny_config` without building weights.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

# Special tokens of the tiny character-level vocabulary. The chat-role tokens are single tokens so a
# chat-templated prompt costs few positions and the role boundaries cannot be produced by accident.
TINY_BOS, TINY_EOS, TINY_PAD, TINY_UNK = "<s>", "</s>", "<pad>", "<unk>"
TINY_ROLES = ("<|system|>", "<|user|>", "<|assistant|>")
# Printable characters of the tiny vocabulary: digits, letters, punctuation (includes \ { } ^ $ _),
# space and newline. Anything else maps to <unk>.
TINY_CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"
# Chat template of the tiny model: bos, then "<|role|>\ncontent</s>\n" per message; the generation
# prompt opens an assistant turn. The end-of-turn token is the EOS token, so a chat completion
# finishes exactly when the model emits EOS.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _byte_level_symbol(ch: str) -> str:
    """The byte-level BPE symbol of a one-byte character (GPT-2 / Qwen2 byte-to-unicode table).

    Printable ASCII maps to itself; other bytes (space, newline, ...) are shifted to 256 + rank.
    """
    b = ch.encode("utf-8")
    if len(b) != 1:
        raise ValueError(f"tiny vocabulary characters must be single bytes, got {ch!r}")
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    if b[0] in printable:
        return chr(b[0])
    return chr(256 + sorted(set(range(256)) - printable).index(b[0]))


# Pre-tokenisation regex of Qwen2's tokenizer (transformers' Qwen2Tokenizer); reproduced so that the
# tokenizer.json we write behaves exactly like the Qwen2Tokenizer that AutoTokenizer rebuilds from it.
_QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def build_tiny_tokenizer():
    """A character-level byte-level-BPE tokenizer (no merges) with a chat template.

    Why byte-level BPE and not a plain character map: ``AutoTokenizer`` always instantiates
    ``Qwen2Tokenizer`` for a ``qwen2`` checkpoint and rebuilds the pipeline from the saved vocabulary
    (byte-level BPE, Qwen2 regex, NFC, no BOS added). Building exactly that pipeline here, with one
    vocabulary entry per allowed character and no merges, makes every character one token and keeps
    the tokenizer we write, the one transformers loads and the one vLLM loads identical.
    Characters outside :data:`TINY_CHARS` have no token and are dropped by the tokenizer (there is
    no byte fallback); the tiny models are only ever fed ASCII.

    No special token is added on encode; the chat template writes BOS itself. Chat-templated strings
    are therefore encoded with ``add_special_tokens=False`` (harmless either way here, essential for
    tokenizers that do add BOS).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [TINY_PAD, TINY_BOS, TINY_EOS, TINY_UNK, *TINY_ROLES]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in TINY_CHARS:
        vocab.setdefault(_byte_level_symbol(ch), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=TINY_BOS,
        eos_token=TINY_EOS,
        pad_token=TINY_PAD,
        unk_token=TINY_UNK,
        extra_special_tokens=list(TINY_ROLES),
        model_max_length=512,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def tiny_config(*, vocab: str = "char", hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2,
                head_dim: int = 32, max_position_embeddings: int = 512, num_kv_heads: int | None = None,
                intermediate_size: int | None = None, init_std: float = 0.02, tokenizer=None):
    """The ``Qwen2Config`` of a tiny model (:func:`build_tiny_model`'s options, checked), without weights."""
    from transformers import Qwen2Config

    if vocab != "char":
        raise ValueError(f"vocab: only 'char' is supported for tiny models, got {vocab!r}")
    for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("num_heads", num_heads), ("max_position_embeddings", max_position_embeddings)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if head_dim < 32:
        raise ValueError(f"head_dim must be >= 32 (vLLM's CPU attention fails below), got {head_dim}")
    if num_heads * head_dim != hidden_size:
        raise ValueError(
            f"hidden_size ({hidden_size}) must equal num_heads ({num_heads}) x head_dim ({head_dim})")
    num_kv_heads = num_heads if num_kv_heads is None else int(num_kv_heads)
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
    )
    config.head_dim = head_dim
    return config


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vocab: str = "char",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int = 32,
    max_position_embeddings: int = 512,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    init_std: float = 0.02,
) -> Path:
    """Write a tiny random Qwen2 causal LM + character-level tokenizer to ``out_dir``; return it.

    Why: tests and the offline demo need a real transformers/vLLM-loadable checkpoint that generates
    in milliseconds. Weights are drawn from a ``torch.Generator`` seeded with ``seed`` in a fixed
    parameter order, so the same seed gives bit-identical weights regardless of global RNG state.
    Embeddings are tied (like SmolLM2 and small Qwen models) so weight sync paths are exercised with
    a tied ``lm_head``. ``head_dim`` must be >= 32 (vLLM's CPU attention fails at 16) and equal
    ``hidden_size / num_heads`` (Qwen2 derives the head size from those two in some engines).
    """
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(vocab=vocab, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         head_dim=head_dim, max_position_embeddings=max_position_embeddings,
                         num_kv_heads=num_kv_heads, intermediate_size=intermediate_size, init_std=init_std,
                         tokenizer=tokenizer)
    out = Path(out_dir)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                param.fill_(1.0)  # RMSNorm gains start at identity, as in a fresh Qwen2
            else:
                param.normal_(0.0, init_std, generator=gen)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
