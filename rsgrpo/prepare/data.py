"""Dataset specs -> canonical records ``{"id", "problem", "answer"}``, prompt templates, and the
``prepare-data`` verb.

Every training or evaluation set enters the project through :func:`load_records`, so the trainer,
the sampler and the scorer all see one record shape whatever the source. A spec is a dict (from
YAML) with a ``source``:

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
``generator`` a seeded offline generator, ``{"source": "generator", "name": "arithmetic", "n": 200,
              "seed": 0, "difficulty": 1..5 | [levels] | "mixed"}``: arithmetic and word problems
              with exact answers, easy enough (level 1: "What is 3 + 4?") for SmolLM2-135M;
              ``{"name": "carry_addition", "n": 200, "seed": 0, "digits": 2}``: ``37+45=`` problems,
              half with a carry (record field ``kind``), the synthetic task of :mod:`rsgrpo.synthetic`.

Common keys: ``name`` (used in error messages and default ids ``<name>-<index>``, index = position
in the source), ``id_field`` (default: the source's ``id`` column when every row has one),
``dedup`` (drop repeated problems, keeping the first), ``limit`` (keep the first N records),
``extra_fields`` (``{record field: source path}``: more columns copied into each record, e.g.
``{"difficulty": "difficulty"}``; rewards see every record field, see :mod:`rsgrpo.rewards`),
``answer_format`` (``any``, the default, or ``integer``: the final answer must be written as a
literal integer before math-verify compares it, so restating the question, "5 + 8", is wrong; every
gold answer must then be a literal integer; see :mod:`rsgrpo.grading.answer_format`). A non-default
format is stored in each record's ``answer_format`` field, so it travels with a prepared file to the
trainer's rewards and the scorer; a spec without the key takes the field from the rows (a prepared
file), and the records of an ``any`` dataset have no such field.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

from rsgrpo.prepare.synthetic import carry_addition_problems

__all__ = [
    "load_records",
    "generate_arithmetic",
    "build_prompt",
    "write_records",
    "BOXED_INSTRUCTION",
    "PROMPT_TEMPLATES",
    "SOURCES",
    "GENERATORS",
]

log = logging.getLogger(__name__)

SOURCES = ("hf", "local", "generator")
PROMPT_TEMPLATES = ("chat", "plain", "raw")
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_FIELDS = {"problem": "problem", "answer": "answer"}
# spec key and record field of the answer format: rsgrpo.grading.answer_format.ANSWER_FORMAT_FIELD,
# repeated so that importing this module does not import the grading package
ANSWER_FORMAT_KEY = "answer_format"


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
    id_field = spec.get("id_field")
    if id_field is None and rows and all(isinstance(r, dict) and "id" in r for r in rows):
        id_field = "id"
    name = spec.get("name") or dataset
    records: list[dict] = []
    for index, row in enumerate(rows):
        record = {}
        if id_field is not None:
            value = _get_path(row, id_field)
            if value is _MISSING or _as_text(value) in (None, ""):
                raise ValueError(f"dataset {dataset!r}, row {index}: id field {id_field!r} is missing "
                                 f"or empty (value {None if value is _MISSING else value!r})")
            record["id"] = _as_text(value)
        else:
            record["id"] = f"{name}-{index}"
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
        _set_answer_format(record, row, spec_format, dataset, index)
        records.append(record)

    if spec.get("dedup"):
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
        records = list(kept.values())

    seen: dict[str, int] = {}
    for position, record in enumerate(records):
        if record["id"] in seen:
            raise ValueError(f"dataset {dataset!r}: duplicate id {record['id']!r} (records "
                             f"{seen[record['id']]} and {position}); set 'id_field' or 'dedup'")
        seen[record["id"]] = position

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


def load_records(spec: dict) -> list[dict]:
    """Canonical records ``[{"id": str, "problem": str, "answer": str}, ...]`` for a dataset spec.

    See the module docstring for the spec keys. Raises ValueError naming the dataset or file, the
    field and the offending value for: unknown source/generator, a missing field, an empty
    problem or answer, duplicate ids, an unknown answer format, a non-integer gold answer of an
    ``integer`` dataset.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a dataset spec must be a mapping, got {type(spec).__name__}: {spec!r}")
    source = spec.get("source")
    if source == "hf":
        path = spec.get("path")
        if not path:
            raise ValueError(f"hf dataset spec needs 'path' (the hub id), got {spec!r}")
        split = spec.get("split", "train")
        rows = _load_hf_rows(path, split, spec.get("subset"))
        default_name = str(path).rstrip("/").split("/")[-1]
        return _canonical_records(rows, {"name": default_name, **spec}, f"{path}[{split}]")
    if source == "local":
        path = spec.get("path")
        if not path:
            raise ValueError(f"local dataset spec needs 'path', got {spec!r}")
        rows = _read_local_rows(Path(path))
        return _canonical_records(rows, {"name": Path(path).stem, **spec}, str(path))
    if source == "generator":
        generator = spec.get("name")
        if generator not in GENERATORS:
            raise ValueError(f"unknown generator {generator!r}; known generators: "
                             f"{', '.join(sorted(GENERATORS))}")
        common = ("dedup", "limit", "extra_fields", ANSWER_FORMAT_KEY)  # keys of every source
        options = {k: v for k, v in spec.items() if k not in ("source", "name", *common)}
        try:
            records = GENERATORS[generator](**options)
        except TypeError as exc:
            raise ValueError(f"generator {generator!r}: bad options {sorted(options)} ({exc})") from exc
        return _canonical_records(records, {"id_field": "id", **{k: spec[k] for k in common if k in spec}},
                                  f"generator:{generator}")
    raise ValueError(f"unknown dataset source {source!r}; allowed sources: {', '.join(SOURCES)}")


# --------------------------------------------------------------------------------------------
# offline generator
# --------------------------------------------------------------------------------------------

ARITHMETIC_LEVELS = (1, 2, 3, 4, 5)
_NAMES = ("Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo")
_ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books")


def _fraction_latex(value: Fraction) -> str:
    """Exact answer as math-verify reads it: an integer, or ``\\frac{p}{q}`` in lowest terms."""
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _arithmetic_problem(level: int, rng: random.Random) -> tuple[str, Fraction]:
    """One problem of a difficulty level and its exact value.

    1: one-digit addition; 2: two-digit addition or subtraction (non-negative result);
    3: multiplication of a two-digit by a one-digit number; 4: a two-step word problem, or an
    expression needing operator precedence; 5: sum of two fractions (answer a reduced fraction).
    """
    if level == 1:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} + {b}?", Fraction(a + b)
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(1, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", Fraction(a + b)
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", Fraction(a - b)
    if level == 3:
        a, b = rng.randint(11, 99), rng.randint(2, 9)
        return f"What is {a} times {b}?", Fraction(a * b)
    if level == 4:
        if rng.random() < 0.5:
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a, b = rng.randint(5, 40), rng.randint(2, 30)
            c = rng.randint(1, a + b)
            text = (f"{name} has {a} {item}. {name} gets {b} more {item} and then gives away {c}. "
                    f"How many {item} does {name} have now?")
            return text, Fraction(a + b - c)
        a, b, c = rng.randint(2, 20), rng.randint(2, 9), rng.randint(2, 9)
        return f"What is {a} + {b} times {c}?", Fraction(a + b * c)
    if level == 5:
        b, d = rng.randint(2, 9), rng.randint(2, 9)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        text = f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms."
        return text, Fraction(a, b) + Fraction(c, d)
    raise ValueError(f"arithmetic difficulty level must be one of {ARITHMETIC_LEVELS}, got {level!r}")


def generate_arithmetic(n: int = 200, seed: int = 0, difficulty: int | str | list = "mixed") -> list[dict]:
    """``n`` arithmetic / word problems with exact answers, deterministic for ``seed``.

    ``difficulty``: a level 1..5, a list of levels (cycled), or ``"mixed"`` (= levels 1..5
    cycled). Problem ``i`` depends only on ``(seed, i, its level)``, so the first k problems are
    the same for any ``n``. Ids are ``arithmetic-<i>``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"generator 'arithmetic': 'n' must be a positive integer, got {n!r}")
    if difficulty == "mixed" or difficulty is None:
        levels = list(ARITHMETIC_LEVELS)
    elif isinstance(difficulty, (list, tuple)):
        levels = list(difficulty)
    else:
        levels = [difficulty]
    for level in levels:
        if level not in ARITHMETIC_LEVELS:
            raise ValueError(f"generator 'arithmetic': difficulty {level!r} is not one of "
                             f"{ARITHMETIC_LEVELS} or 'mixed'")
    width = max(4, len(str(n - 1)))
    records = []
    for i in range(n):
        level = levels[i % len(levels)]
        rng = random.Random(f"arithmetic/{seed}/{i}")
        problem, value = _arithmetic_problem(level, rng)
        records.append({"id": f"arithmetic-{i:0{width}d}", "problem": problem,
                        "answer": _fraction_latex(value), "level": level})
    return records


GENERATORS = {"arithmetic": generate_arithmetic, "carry_addition": carry_addition_problems}


# --------------------------------------------------------------------------------------------
# prompts and output
# --------------------------------------------------------------------------------------------


def build_prompt(problem: str, *, template: str = "chat", tokenizer=None, system: str | None = None) -> str:
    """The text a model is given for ``problem``; ``chat`` and ``plain`` ask for the answer in ``\\boxed{}``.

    ``raw``: the problem text as it is, for a model pretrained on the task's own format
    (:mod:`rsgrpo.synthetic`); ``system`` is not allowed there.
    ``plain``: ``[system + blank line] + problem + blank line + instruction``, for base models.
    ``chat``: one user turn (problem + instruction), optional system turn, rendered with
    ``tokenizer.apply_chat_template(..., add_generation_prompt=True, tokenize=False)``.
    """
    if template == "raw":
        if system:
            raise ValueError("prompt template 'raw' takes no system prompt")
        return problem
    user = f"{problem.strip()}\n\n{BOXED_INSTRUCTION}"
    if template == "plain":
        return f"{system.strip()}\n\n{user}" if system else user
    if template == "chat":
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError("prompt template 'chat' needs a tokenizer with apply_chat_template "
                             f"(got {type(tokenizer).__name__}); use template 'plain' without one")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown prompt template {template!r}; allowed templates: {', '.join(PROMPT_TEMPLATES)}")


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
