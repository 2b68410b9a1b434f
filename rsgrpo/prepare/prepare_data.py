"""``python -m rsgrpo prepare-data --spec ... --out FILE``: a dataset spec -> JSONL of canonical records."""

from __future__ import annotations

import argparse
import sys

from rsgrpo.prepare.data_sources import load_records, write_records
from rsgrpo.specs import load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True,
                        help="dataset spec: a .yaml/.yml/.json file or an inline YAML/JSON mapping, "
                             "e.g. '{source: generator, name: arithmetic, n: 200, seed: 0}'")
    parser.add_argument("--out", required=True, help="output JSONL of {id, problem, answer} records")


def main(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    records = load_records(spec)
    write_records(records, args.out)
    print(f"prepare-data: wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0
