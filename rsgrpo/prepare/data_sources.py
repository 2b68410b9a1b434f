"""Dataset specs -> canonical records ``{"id", "problem", "answer"}``, and writing them as JSONL.

Every training or evaluation set enters the project through :func:`load_records`, so the trainer,
the sampler and the scorer all see one record shape whatever the source. A spec is a dict (from
YAML, or :func:`rsgrpo.specs.load_spec`) with a ``source``, one of :data:`DATA_SOURCES`:

``hf``        a Hugging Face dataset: ``{"source": "hf", "path": "hiyouga/math12k", "split": "train",
              "subset": optional config name, "fields": {"problem": "problem", "answer": "answer"},
              "id_field": optional, "dedup": false}``. Field paths may be nested with dots, list
              items by index: DAPO-Math-17k is ``{"problem": "prompt.0.content", "answer":
              "reward_model.ground_truth"}`` with ``dedup: true`` (it repeats ~17.9k prompts ~100x).
              Needs the ``datasets`` library (pinned in pyproject.toml, imported only when an ``hf``
              spec is loaded). ``path`` may also be a local directory holding a downloaded copy
              (``data/train-*.parquet``, ``test.jsonl``...), which loads offline (``HF_HUB_OFFLINE=1``);
              default ids then use the directory's name, so keep the hub repo's name or set ``name``.
``local``     a ``.jsonl``/``.json`` (one object per line) or ``.parquet`` file, same ``fields``.
``generator`` a seeded offline generator of :mod:`rsgrpo.prepare.generators`, ``{"source":
              "generator", "name": "arithmetic", "n": 200, "seed": 0, "difficulty": 1..5 | [levels] |
              "mixed"}``: arithmetic and word problems with exact answers, easy enough (level 1: "What
              is 3 + 4?") for SmolLM2-135M; ``{"name": "carry_addition", "n": 200, "seed": 0, "digits":
              2}``: ``37+45=`` problems, half with a carry (record field ``kind``), the synthetic task
              of :mod:`rsgrpo.prepare.synthetic`.

Common keys: ``name`` (used in error messages and default ids ``<name>-<index>``, index = position
in the source), ``id_field`` (default: the source's ``id`` column when every row has one),
``dedup`` (drop repeated problems, keeping the first), ``limit`` (keep the first N records),
``extra_fields`` (``{record field: source path}``: more columns copied into each record, e.g.
``{"difficulty": "difficulty"}``; rewards see every record field, see :mod:`rsgrpo.train.rewards`),
``answer_format`` (``any``, the default, or ``integer``: the final answer must be written as a
literal integer before math-verify compares it, so restating the question, "5 + 8", is wrong; every
gold answer must then be a literal integer; see :mod:`rsgrpo.grading.answer_format`). A non-default
format is stored in each record's ``answer_format`` field, so it travels with a prepared file to the
trainer's rewards and the scorer; a spec without the key takes the field from the rows (a prepared
file), and the records of an ``any`` dataset have no such field.

A new source is one function decorated with :func:`register` plus its test: it reads the rows and
says how to name them (:class:`SourceRows`); mapping rows to records is the same for every source.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from rsgrpo.prepare.generators import generate
from rsgrpo.registry import refuse_taken

__all__ = ["DATA_SOURCES", "SourceRows", "register", "data_source", "load_records", "write_records"]

log = logging.getLogger(__name__)

DEFAULT_FIELDS = {"problem": "problem", "answer": "answer"}
# spec key and record field of the answer format: rsgrpo.grading.answer_format.ANSWER_FORMAT_FIELD,
# repeated so that importing this module does not import the grading package
ANSWER_FORMAT_KEY = "answer_format"
# spec keys about records rather than rows, which a generator does not take as options
RECORD_KEYS = ("dedup", "limit", "extra_fields", ANSWER_FORMAT_KEY)


class SourceRows(NamedTuple):
    """What a data source read: its rows, how errors name the dataset, and the spec the rows are
    mapped to records with (the source's spec, defaults such as ``name`` filled in)."""

    rows: list
    dataset: str
    spec: dict


DATA_SOURCES: dict[str, Callable[[dict], SourceRows]] = {}


def register(name: str):
    """Decorator adding ``fn(spec) -> SourceRows`` to :data:`DATA_SOURCES` as source ``name`` (once: a
    second source of the same name would change what existing dataset specs mean)."""

    def wrap(fn):
        refuse_taken(DATA_SOURCES, name, "data source")
        DATA_SOURCES[name] = fn
        return fn

    return wrap


# --------------------------------------------------------------------------------------------
# field access and record building
# --------------------------------------------------------------------------------------------

_MISSING = object()


def _get_path(row: Any, path: str) -> Any:
    """``row["a"]["b"][0]`` for ``path="a.b.0"``; ``_MISSING`` when any step is absent."""
    value = row
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit():
            index = int(part)
            if not -len(value) <= index < len(value):
                return _MISSING
            value = value[index]
        elif hasattr(value, "tolist") and part.isdigit():  # numpy arrays from parquet
            items = value.tolist()
            index = int(part)
            if index >= len(items):
                return _MISSING
            value = items[index]
        else:
            return _MISSING
    return value


def _as_text(value: Any) -> str | None:
    """Field value as text: strings stripped, whole numbers without ``.0``; None for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _as_text(value.item())
        except (ValueError, AttributeError):
            pass
    return str(value).strip()


def _plain(value: Any) -> Any:
    """A source value as plain JSON data (numpy scalars and arrays from parquet become Python's)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _extra_fields(spec: dict, dataset: str) -> dict[str, str]:
    extras = spec.get("extra_fields") or {}
    if not isinstance(extras, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in extras.items()):
        raise ValueError(f"dataset {dataset!r}: 'extra_fields' must map record field names to source "
                         f"field paths, got {extras!r}")
    reserved = sorted(set(extras) & {"id", *DEFAULT_FIELDS, ANSWER_FORMAT_KEY})
    if reserved:
        raise ValueError(f"dataset {dataset!r}: 'extra_fields' cannot name {reserved} (use 'id_field', "
                         "'fields' and 'answer_format' for those)")
    return extras


def _spec_answer_format(spec: dict, dataset: str) -> str | None:
    """The spec's ``answer_format`` (checked), or None when the spec does not set it."""
    if ANSWER_FORMAT_KEY not in spec:
        return None
    from rsgrpo.grading.answer_format import check_answer_format

    return check_answer_format(spec[ANSWER_FORMAT_KEY], f"dataset {dataset!r}")


def _set_answer_format(record: dict, row: Any, spec_format: str | None, dataset: str, index: int) -> None:
    """Store a non-default answer format in ``record`` (the spec's, else the row's own field) and
    check that an ``integer`` record's gold is a literal integer."""
    answer_format = spec_format
    if answer_format is None and isinstance(row, dict) and ANSWER_FORMAT_KEY in row:
        answer_format = row[ANSWER_FORMAT_KEY]
        where = f"dataset {dataset!r}, row {index} (id {record['id']!r}) field {ANSWER_FORMAT_KEY!r}"
    else:
        where = f"dataset {dataset!r}"
    if answer_format is None or answer_format == "any":
        return
    from rsgrpo.grading.answer_format import check_answer_format, is_integer_literal

    check_answer_format(answer_format, where)
    if not is_integer_literal(record["answer"]):
        raise ValueError(f"dataset {dataset!r}: answer_format is {answer_format!r} but record "
                         f"{record['id']!r} has the answer {record['answer']!r}, which is not a literal integer")
    record[ANSWER_FORMAT_KEY] = answer_format


def _record_id(row: Any, index: int, id_field: str | None, name: str, dataset: str) -> str:
    if id_field is None:
        return f"{name}-{index}"
    value = _get_path(row, id_field)
    if value is _MISSING or _as_text(value) in (None, ""):
        raise ValueError(f"dataset {dataset!r}, row {index}: id field {id_field!r} is missing "
                         f"or empty (value {None if value is _MISSING else value!r})")
    return _as_text(value)


def _copy_fields(record: dict, row: Any, index: int, fields: dict, extras: dict, dataset: str) -> None:
    """Set ``record``'s problem, answer and extra fields from ``row``; ValueError for a missing field
    or an empty problem or answer."""
    for key in ("problem", "answer"):
        value = _get_path(row, fields[key])
        if value is _MISSING:
            present = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"dataset {dataset!r}, row {index}: field {fields[key]!r} (for "
                             f"{key!r}) is missing; the row has {present}")
        text = _as_text(value)
        if not text:
            raise ValueError(f"dataset {dataset!r}, row {index} (id {record['id']!r}): {key} "
                             f"field {fields[key]!r} is empty (value {value!r})")
        record[key] = text
    for key, path in extras.items():
        value = _get_path(row, path)
        if value is _MISSING:
            raise ValueError(f"dataset {dataset!r}, row {index} (id {record['id']!r}): extra field "
                             f"{path!r} (for {key!r}) is missing")
        record[key] = _plain(value)


def _dedup(records: list[dict], dataset: str) -> list[dict]:
    """The records without repeated problems, each problem's first occurrence kept (with its answer)."""
    kept: dict[str, dict] = {}
    conflicts = 0
    for record in records:
        first = kept.setdefault(record["problem"], record)
        if first is not record and first["answer"] != record["answer"]:
            conflicts += 1
    if conflicts:
        log.warning("dataset %r: %d duplicated problems carry a different answer than their "
                    "first occurrence; the first answer is kept", dataset, conflicts)
    log.info("dataset %r: dedup kept %d of %d records", dataset, len(kept), len(records))
    return list(kept.values())


def _check_unique_ids(records: list[dict], dataset: str) -> None:
    seen: dict[str, int] = {}
    for position, record in enumerate(records):
        if record["id"] in seen:
            raise ValueError(f"dataset {dataset!r}: duplicate id {record['id']!r} (records "
                             f"{seen[record['id']]} and {position}); set 'id_field' or 'dedup'")
        seen[record["id"]] = position


def _id_field(spec: dict, rows: list) -> str | None:
    """The spec's ``id_field``, else ``id`` when every row has one, else None (positional ids)."""
    id_field = spec.get("id_field")
    if id_field is None and rows and all(isinstance(r, dict) and "id" in r for r in rows):
        id_field = "id"
    return id_field


def _canonical_records(rows: Iterable[dict], spec: dict, dataset: str) -> list[dict]:
    """Map source rows to ``{id, problem, answer, <extra fields>, [answer_format]}`` with the spec's
    fields, ids, answer format, dedup and limit."""
    fields = {**DEFAULT_FIELDS, **(spec.get("fields") or {})}
    unknown = set(fields) - set(DEFAULT_FIELDS)
    if unknown:
        raise ValueError(f"dataset {dataset!r}: unknown keys in 'fields': {sorted(unknown)} "
                         f"(allowed: {sorted(DEFAULT_FIELDS)})")
    extras = _extra_fields(spec, dataset)
    spec_format = _spec_answer_format(spec, dataset)
    rows = list(rows)
    id_field, name = _id_field(spec, rows), spec.get("name") or dataset
    records: list[dict] = []
    for index, row in enumerate(rows):
        record = {"id": _record_id(row, index, id_field, name, dataset)}
        _copy_fields(record, row, index, fields, extras, dataset)
        _set_answer_format(record, row, spec_format, dataset, index)
        records.append(record)
    if spec.get("dedup"):
        records = _dedup(records, dataset)
    _check_unique_ids(records, dataset)
    limit = spec.get("limit")
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"dataset {dataset!r}: 'limit' must be a positive integer, got {limit!r}")
        records = records[:limit]
    if not records:
        raise ValueError(f"dataset {dataset!r} holds no records")
    return records


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


def _load_hf_rows(path: str, split: str, subset: str | None) -> list[dict]:
    """Rows of a Hugging Face dataset split: a hub id or a local directory holding a copy of one.

    The one place that needs ``datasets``, imported here so the CLI never pays for it otherwise
    (tests patch this function)."""
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"dataset {path!r}: source 'hf' needs the 'datasets' library, which is not "
                         "installed; install it or use a 'local' copy of the data") from exc
    try:
        dataset = datasets.load_dataset(path, subset, split=split)
    except (ValueError, OSError) as exc:
        # datasets' own messages name neither the dataset nor the split ('Unknown split "test".
        # Should be one of ['train'].'), and offline a hub id fails with a bare ConnectionError.
        where = f"dataset {path!r}" + (f" (subset {subset!r})" if subset else "") + f", split {split!r}"
        hint = ("; offline (HF_HUB_OFFLINE=1) or without hub access, 'path' must be a local directory "
                "holding the dataset's files or a dataset already in the Hugging Face cache"
                if isinstance(exc, ConnectionError) else "")
        raise ValueError(f"{where}: cannot load it ({type(exc).__name__}: {exc}){hint}") from exc
    return list(dataset)


def _read_local_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"dataset file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    if suffix in (".jsonl", ".json"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: a record must be a JSON object, got "
                                     f"{type(row).__name__}")
                rows.append(row)
        return rows
    raise ValueError(f"dataset file {str(path)!r}: unsupported extension {suffix!r} "
                     "(use .jsonl, .json or .parquet)")


@register("hf")
def _hf_source(spec: dict) -> SourceRows:
    path = spec.get("path")
    if not path:
        raise ValueError(f"hf dataset spec needs 'path' (the hub id), got {spec!r}")
    split = spec.get("split", "train")
    rows = _load_hf_rows(path, split, spec.get("subset"))
    default_name = str(path).rstrip("/").split("/")[-1]
    return SourceRows(rows, f"{path}[{split}]", {"name": default_name, **spec})


@register("local")
def _local_source(spec: dict) -> SourceRows:
    path = spec.get("path")
    if not path:
        raise ValueError(f"local dataset spec needs 'path', got {spec!r}")
    rows = _read_local_rows(Path(path))
    return SourceRows(rows, str(path), {"name": Path(path).stem, **spec})


@register("generator")
def _generator_source(spec: dict) -> SourceRows:
    """Generator ``name`` run with the spec's other keys as options (:func:`rsgrpo.prepare.generators.generate`);
    its records carry their own ids."""
    generator = spec.get("name")
    options = {k: v for k, v in spec.items() if k not in ("source", "name", *RECORD_KEYS)}
    records = generate(generator, options)
    return SourceRows(records, f"generator:{generator}",
                      {"id_field": "id", **{k: spec[k] for k in RECORD_KEYS if k in spec}})


def load_records(spec: dict) -> list[dict]:
    """Canonical records ``[{"id": str, "problem": str, "answer": str}, ...]`` for a dataset spec.

    See the module docstring for the spec keys. Raises ValueError naming the dataset or file, the
    field and the offending value for: unknown source/generator, a missing field, an empty
    problem or answer, duplicate ids, an unknown answer format, a non-integer gold answer of an
    ``integer`` dataset.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a dataset spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    rows, dataset, record_spec = data_source(spec.get("source"))(spec)
    return _canonical_records(rows, record_spec, dataset)


def data_source(name) -> Callable[[dict], SourceRows]:
    """The registered data source ``name``; ValueError listing the registered ones for another name."""
    if name not in DATA_SOURCES:
        raise ValueError(f"unknown dataset source {name!r}; allowed sources: {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[name]


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def write_records(records: Iterable[dict], path: str | Path) -> Path:
    """Write canonical records as JSONL atomically (:func:`rsgrpo.io.atomic_path`); extra keys kept."""
    from rsgrpo.io import atomic_path

    path = Path(path)
    records = list(records)
    seen = set()
    for position, record in enumerate(records):
        for key in ("id", "problem", "answer"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise ValueError(f"{path}: record {position} has no non-empty string {key!r} "
                                 f"(value {record.get(key)!r})")
        if record["id"] in seen:
            raise ValueError(f"{path}: duplicate id {record['id']!r} at record {position}")
        seen.add(record["id"])
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
