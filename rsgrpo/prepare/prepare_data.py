"""``python -m rsgrpo prepare-data --spec ... --out FILE``: a dataset spec -> JSONL of canonical records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsgrpo.prepare.data import load_records, write_records


def _parse_spec(text: str) -> dict:
    """``--spec``: a YAML/JSON file path, or the spec itself inline (YAML is a superset of JSON)."""
    import yaml

    candidate = Path(text)
    looks_inline = text.lstrip().startswith("{") or "\n" in text or len(text) >= 4096
    if not looks_inline and candidate.suffix in (".yaml", ".yml", ".json"):
        if not candidate.is_file():
            raise ValueError(f"spec file {text!r} does not exist")
        source, body = text, candidate.read_text(encoding="utf-8")
    else:
        source, body = "inline --spec", text
    try:
        spec = yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not valid YAML/JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{source}: the spec must be a mapping, got {type(spec).__name__}")
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True,
                        help="dataset spec: a .yaml/.yml/.json file or an inline YAML/JSON mapping, "
                             "e.g. '{source: generator, name: arithmetic, n: 200, seed: 0}'")
    parser.add_argument("--out", required=True, help="output JSONL of {id, problem, answer} records")


def main(args: argparse.Namespace) -> int:
    spec = _parse_spec(args.spec)
    records = load_records(spec)
    write_records(records, args.out)
    print(f"prepare-data: wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0
