"""The experiment grid: a validated workflow config -> the cells to train, sample and score.

A *cell* is one trained (or base) policy: model x train set x method (x beta). The grid is the union
of each sweep's product (``config["sweeps"]``); a cell listed by several sweeps exists once, with the
union of their evaluation steps. The base model is one cell per model (``<model>/base``), shared by
every setting of that model, so its evaluation is never recomputed.

Result paths (:class:`Layout`) are the one place the workflow's file layout is written down; the
Snakefile and the ``grid`` verb (which writes ``cells.csv`` / ``benchmarks.csv`` for the aggregate
step) both use it. ``results/qwen7b/beta4/passk.csv`` is the cell (qwen7b, its default train set,
rs_grpo, beta 4); a non-default train set adds a path segment: ``results/qwen7b/dapo17k/grpo/...``.

Everything here is pure (dicts in, dataclasses out). Problems the JSON schema cannot express (unknown
names across sections, parameters an estimator does not take, k > n, ...) raise :class:`ConfigError`
naming the config file, the key and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path
from typing import Iterable

import yaml

from rsgrpo.advantages import ESTIMATORS, estimator_params

FINAL = "final"


class ConfigError(ValueError):
    """A workflow config that is well-formed but inconsistent."""


@dataclasses.dataclass(frozen=True)
class Cell:
    model: str
    train_set: str | None  # None for the base model
    method: str
    beta: float | None
    run: str  # path segment(s) below results/<model>/
    eval_steps: tuple[str, ...]  # "final" and/or step numbers as strings

    @property
    def id(self) -> str:
        return f"{self.model}/{self.run}"

    @property
    def is_base(self) -> bool:
        return self.train_set is None


@dataclasses.dataclass(frozen=True)
class Layout:
    """File layout of the workflow (relative to the working directory)."""

    results: str = "results"
    runs: str = "runs"
    models: str = "models"
    data: str = "data"
    logs: str = "logs"

    def model_dir(self, model: str) -> str:
        return f"{self.models}/{model}"

    def train_data(self, name: str) -> str:
        return f"{self.data}/train/{name}.jsonl"

    def benchmark_data(self, name: str) -> str:
        return f"{self.data}/benchmarks/{name}.jsonl"

    def run_dir(self, cell_id: str) -> str:
        return f"{self.runs}/{cell_id}"

    def cell_dir(self, cell_id: str) -> str:
        return f"{self.results}/{cell_id}"

    def eval_dir(self, cell_id: str, step: str) -> str:
        """Where a checkpoint's samples and scores go; the final checkpoint's are the cell's own files."""
        return self.cell_dir(cell_id) if step == FINAL else f"{self.cell_dir(cell_id)}/step{int(step):06d}"


def _fmt_beta(beta: float) -> str:
    return f"{beta:g}"


def beta_of(method_cfg: dict) -> bool:
    """Whether a method's estimator takes ``beta``."""
    est = method_cfg.get("estimator")
    return bool(est) and "beta" in estimator_params(est)


def run_segment(model_cfg: dict, train_set: str | None, method: str, beta: float | None) -> str:
    """Path of a cell below results/<model>/: ``base``, ``grpo``, ``beta4``, ``dapo17k/beta2``..."""
    if train_set is None:
        return "base"
    leaf = f"beta{_fmt_beta(beta)}" if method == "rs_grpo" and beta is not None else (
        f"{method}-beta{_fmt_beta(beta)}" if beta is not None else method
    )
    return leaf if train_set == model_cfg["train_set"] else f"{train_set}/{leaf}"


def _known(section: dict) -> str:
    return ", ".join(sorted(section)) or "none"


def check_config(config: dict, source: str = "config") -> None:
    """Cross-checks beyond the JSON schema; raise ConfigError naming ``source``, the key and the value."""

    def fail(key: str, message: str):
        raise ConfigError(f"{source}: {key}: {message}")

    models, train_sets = config.get("models", {}), config.get("train_sets", {})
    benchmarks, methods = config.get("benchmarks", {}), config.get("methods", {})
    for key, model in models.items():
        if model["train_set"] not in train_sets:
            fail(f"models.{key}.train_set", f"unknown train set {model['train_set']!r} (known: {_known(train_sets)})")
    for key, bench in benchmarks.items():
        bad = [k for k in bench["ks"] if k > bench["n"]]
        if bad:
            fail(f"benchmarks.{key}.ks", f"k={bad[0]} exceeds the {bench['n']} samples per problem (benchmarks.{key}.n)")
    for key, method in methods.items():
        est = method.get("estimator")
        if key == "base":
            if est:
                fail("methods.base.estimator", f"the base model is not trained; remove estimator {est!r}")
            continue
        if not est:
            fail(f"methods.{key}.estimator", "missing (every trained method needs an advantage estimator)")
        if est not in ESTIMATORS:
            fail(f"methods.{key}.estimator", f"unknown estimator {est!r} (known: {_known(ESTIMATORS)})")
        accepted = estimator_params(est)
        for param in method.get("params", {}):
            if param not in accepted:
                fail(f"methods.{key}.params.{param}", f"estimator {est!r} takes no parameter {param!r} (it takes: {', '.join(accepted) or 'none'})")
        if "beta" in method.get("params", {}):
            fail(f"methods.{key}.params.beta", "set beta in a sweep's betas list, not in the method")
        required = [p for p, d in accepted.items() if d is inspect.Parameter.empty and p not in method.get("params", {})]
        if required:
            fail(f"methods.{key}.params", f"estimator {est!r} needs {required}")
    steps_total = config.get("training", {}).get("steps")
    every = config.get("training", {}).get("checkpoint_every")
    for i, sweep in enumerate(config.get("sweeps", [])):
        where = f"sweeps[{i}]" + (f" ({sweep['name']})" if sweep.get("name") else "")
        for axis, section, label in (("models", models, "model"), ("train_sets", train_sets, "train set"),
                                     ("methods", methods, "method")):
            for j, name in enumerate(sweep.get(axis, [])):
                if name not in section:
                    fail(f"{where}.{axis}[{j}]", f"unknown {label} {name!r} (known: {_known(section)})")
        trained = [m for m in sweep["methods"] if m != "base"]
        takes_beta = [m for m in trained if beta_of(methods[m])]
        if sweep.get("betas") and not takes_beta:
            fail(f"{where}.betas", f"{sweep['betas']} given, but none of the methods {sweep['methods']} takes beta")
        if takes_beta and not sweep.get("betas"):
            fail(f"{where}.betas", f"methods {takes_beta} need beta: add a betas list to the sweep")
        for j, step in enumerate(sweep.get("eval_steps", [])):
            if step != FINAL and steps_total is not None and int(step) > steps_total:
                fail(f"{where}.eval_steps[{j}]", f"step {step} is beyond training.steps = {steps_total}")
            if step != FINAL and every and int(step) % every:
                fail(f"{where}.eval_steps[{j}]", f"step {step} is not a multiple of training.checkpoint_every = {every}, so no checkpoint exists there")


def expand(config: dict, source: str = "config") -> list[Cell]:
    """All cells of the grid, in a stable order (sweeps in order, products in order)."""
    check_config(config, source)
    models, methods = config["models"], config["methods"]
    default_steps = [str(s) for s in config.get("evaluation", {}).get("steps", [FINAL])]
    cells: dict[tuple, dict] = {}
    for sweep in config.get("sweeps", []):
        steps = [str(s) for s in sweep.get("eval_steps", default_steps)]
        for model in sweep["models"]:
            train_sets = sweep.get("train_sets") or [models[model]["train_set"]]
            for method in sweep["methods"]:
                if method == "base":
                    combos = [(None, None)]
                else:
                    betas = sweep["betas"] if beta_of(methods[method]) else [None]
                    combos = [(ts, None if b is None else float(b)) for ts in train_sets for b in betas]
                for train_set, beta in combos:
                    key = (model, train_set, method, beta)
                    entry = cells.setdefault(key, {"steps": []})
                    for s in ([FINAL] if method == "base" else steps):
                        if s not in entry["steps"]:
                            entry["steps"].append(s)
    out = []
    for (model, train_set, method, beta), entry in cells.items():
        run = run_segment(models[model], train_set, method, beta)
        steps = sorted(entry["steps"], key=lambda s: (s == FINAL, int(s) if s != FINAL else 0))
        out.append(Cell(model, train_set, method, beta, run, tuple(steps)))
    ids = [c.id for c in out]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ConfigError(f"{source}: sweeps: two cells share the result path {sorted(dupes)[0]!r}; rename a method")
    return out


def cell_from_path(config: dict, model: str, run: str, cells: Iterable[Cell] = ()) -> Cell:
    """The cell behind ``results/<model>/<run>/``, also for cells no sweep lists.

    ``run`` is ``[<train_set>/]<leaf>`` with leaf ``base``, ``beta<b>`` (rs_grpo), ``<method>`` or
    ``<method>-beta<b>``; a cell of the grid keeps its sweeps' evaluation steps, any other cell gets
    ``evaluation.steps``. Raises ConfigError for names the config does not define.
    """
    for cell in cells:
        if cell.model == model and cell.run == run:
            return cell
    models, methods, train_sets = config["models"], config["methods"], config["train_sets"]
    where = f"results/{model}/{run}"
    if model not in models:
        raise ConfigError(f"{where}: unknown model {model!r} (known: {_known(models)})")
    parts = run.split("/")
    if len(parts) > 2:
        raise ConfigError(f"{where}: expected results/<model>/[<train_set>/]<method>")
    train_set = parts[0] if len(parts) == 2 else models[model]["train_set"]
    leaf = parts[-1]
    if train_set not in train_sets:
        raise ConfigError(f"{where}: unknown train set {train_set!r} (known: {_known(train_sets)})")
    if leaf == "base":
        if len(parts) == 2:
            raise ConfigError(f"{where}: the base model has no train set: use results/{model}/base")
        return Cell(model, None, "base", None, "base", (FINAL,))
    method, beta = leaf, None
    if leaf.startswith("beta") and "rs_grpo" in methods:
        method, beta_text = "rs_grpo", leaf[len("beta"):]
    elif "-beta" in leaf:
        method, beta_text = leaf.split("-beta", 1)
    else:
        beta_text = None
    if beta_text is not None:
        try:
            beta = float(beta_text)
        except ValueError:
            raise ConfigError(f"{where}: cannot read a beta from {leaf!r}") from None
        if beta < 0:
            raise ConfigError(f"{where}: beta must be >= 0, got {beta_text}")
    if method not in methods or method == "base":
        raise ConfigError(f"{where}: unknown method {method!r} (known: {_known(methods)})")
    if beta_of(methods[method]) != (beta is not None):
        need = "needs a beta (e.g. beta2)" if beta is None else "takes no beta"
        raise ConfigError(f"{where}: method {method!r} {need}")
    steps = tuple(str(s) for s in config.get("evaluation", {}).get("steps", [FINAL]))
    return Cell(model, train_set, method, beta, run_segment(models[model], train_set, method, beta), steps)


def split_eval(evalrun: str) -> tuple[str, str]:
    """``beta4`` -> (``beta4``, "final"); ``dapo17k/beta2/step000100`` -> (``dapo17k/beta2``, "100")."""
    head, _, last = evalrun.rpartition("/")
    if head and last.startswith("step") and last[4:].isdigit():
        return head, str(int(last[4:]))
    return evalrun, FINAL


def final_step(config: dict, cell: Cell | None = None) -> int:
    """Training steps of a cell (model overrides included)."""
    settings = dict(config.get("training", {}))
    if cell is not None:
        settings.update(config["models"][cell.model].get("training", {}))
    return int(settings.get("steps", 100))


def step_number(config: dict, step: str, cell: Cell | None = None) -> int:
    return final_step(config, cell) if step == FINAL else int(step)


def train_settings(config: dict, cell: Cell, layout: Layout = Layout()) -> dict:
    """The ``python -m rsgrpo train`` config of a cell: training defaults < model overrides < cell."""
    model = config["models"][cell.model]
    method = config["methods"][cell.method]
    settings = dict(config.get("training", {}))
    settings.update(model.get("training", {}))
    params = dict(method.get("params", {}))
    if cell.beta is not None:
        params["beta"] = cell.beta
    settings.update(
        model_dir=layout.model_dir(cell.model),
        train_data=layout.train_data(cell.train_set),
        prompt_template=model.get("template", "chat"),
        method=method["estimator"],
        method_params=params,
    )
    settings.pop("run_dir", None)
    return settings


def cells_table(config: dict, cells: Iterable[Cell], layout: Layout = Layout()) -> list[dict]:
    """Rows of ``cells.csv`` (the aggregate step's index; columns documented in rsgrpo.aggregate)."""
    rows = []
    for cell in cells:
        model = config["models"][cell.model]
        method = config["methods"][cell.method]
        label = method.get("label", cell.method)
        if cell.beta is not None:
            label = f"{label} (β={_fmt_beta(cell.beta)})"
        published = method.get("published", "")
        if published and cell.beta is not None and cell.beta != method.get("published_beta", cell.beta):
            published = ""  # the paper reports this method at one beta only
        final_dir = layout.eval_dir(cell.id, FINAL)
        rows.append(
            {
                "cell": cell.id,
                "model": cell.model,
                "model_name": model.get("name", cell.model),
                "train_set": cell.train_set or "",
                "method": cell.method,
                "estimator": method.get("estimator") or "",
                "beta": "" if cell.beta is None else cell.beta,
                "label": label,
                "published_method": published,
                "published_model": model.get("published_name", ""),
                "passk": f"{final_dir}/passk.csv",
                "graded": f"{final_dir}/graded.parquet",
                "metrics": "" if cell.is_base else f"{layout.cell_dir(cell.id)}/metrics.csv",
                "step_evals": "" if cell.is_base else ";".join(
                    f"{step_number(config, s, cell)}:{layout.eval_dir(cell.id, s)}" for s in cell.eval_steps
                ),
            }
        )
    return rows


def benchmarks_table(config: dict) -> list[dict]:
    return [
        {"benchmark": key, "published_name": b.get("published_name", ""), "n": b["n"], "ks": ";".join(map(str, b["ks"]))}
        for key, b in config["benchmarks"].items()
    ]


def load_yaml_strict(path: str | Path) -> dict:
    """Load YAML, rejecting duplicate keys (plain yaml.safe_load silently keeps the last one)."""

    class StrictLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"{path}: line {key_node.start_mark.line + 1}: duplicate key {key!r} "
                    f"(first defined on line {seen[key] + 1})"
                )
            seen[key] = key_node.start_mark.line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    with open(path) as fh:
        return yaml.load(fh, Loader=StrictLoader) or {}


# ------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-json", required=True, help="the workflow's effective config as JSON")
    parser.add_argument("--out-cells", required=True, help="cells.csv to write")
    parser.add_argument("--out-benchmarks", required=True, help="benchmarks.csv to write")


def main(args: argparse.Namespace) -> int:
    import pandas as pd

    from rsgrpo.io import atomic_path

    config = json.loads(args.config_json)
    cells = expand(config)
    for rows, target in ((cells_table(config, cells), args.out_cells), (benchmarks_table(config), args.out_benchmarks)):
        with atomic_path(target) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
    print(f"{len(cells)} cells, {len(config['benchmarks'])} benchmarks")
    return 0
