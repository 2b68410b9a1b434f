"""``python -m rsgrpo prepare-model --spec ... --out DIR``: a model spec -> a local checkpoint directory."""

from __future__ import annotations

import argparse
import sys

from rsgrpo.prepare.model_sources import parse_model_spec, prepare_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True,
                        help="model spec: a .yaml/.yml/.json file, an inline YAML/JSON mapping or a source "
                             "that needs no keys, e.g. '{source: smollm2}', "
                             "'{source: hub, id: Qwen/Qwen2.5-Math-7B}', '{source: local, path: DIR}', "
                             "'{source: tiny, seed: 0}'")
    parser.add_argument("--out", required=True, help="output checkpoint directory")


def main(args: argparse.Namespace) -> int:
    try:
        if parse_model_spec(args.spec)["source"] == "pretrain":  # its own verb and rule: it trains
            raise ValueError("spec.source 'pretrain' is built by python -m rsgrpo pretrain")
        out = prepare_model(args.spec, args.out)
    except (ValueError, RuntimeError) as exc:
        print(f"prepare-model: error: {exc}", file=sys.stderr)
        return 1
    print(f"prepare-model: {out}")
    return 0
