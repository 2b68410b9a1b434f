"""The experiment grid: a validated workflow config -> the cells to train, sample and score.

A *cell* is one trained (or base) policy: model x train set x method (x beta). The grid is the union
of each sweep's product (``config["sweeps"]``); a cell listed by several sweeps exists once, with the
union of their evaluation steps. The base model is one cell per model (``<model>/base``), shared by
every setting of that model, so its evaluation is never recomputed. A sweep with ``regimes`` (names of
the config's ``regimes``: sampling overrides of ``evaluation``, see :func:`sample_settings`) samples
the base model under each of them instead, one cell per regime (``<model>/base-regime-<name>``).

Where a cell's files live is :mod:`rsgrpo.layout`'s business (:class:`~rsgrpo.layout.Layout`:
``results/qwen7b/beta4/passk.csv`` is the cell qwen7b, its default train set, the method key
:attr:`~rsgrpo.layout.Layout.BARE_BETA_METHOD`, beta 4; a non-default train set adds a path segment:
``results/qwen7b/dapo17k/grpo/...``); the index the analysis reads (``cells.csv``,
``benchmarks.csv``) is written by :mod:`rsgrpo.analysis.cell_index`. Whether a method takes beta is a
property of its estimator (:func:`rsgrpo.estimators.takes_beta`), not of its key.

Everything here is pure (dicts in, dataclasses out). Problems the JSON schema cannot express (unknown
names across sections, parameters an estimator does not take, k > n, ...) raise :class:`ConfigError`
naming the config file, the key and the value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import yaml

from rsgrpo.estimators import ESTIMATORS, default_params, estimator_params, takes_beta
from rsgrpo.layout import FINAL, LAYOUT, Layout

__all__ = ["FINAL", "MAX_TOKENS", "SAMPLING_KEYS", "ConfigError", "Cell", "method_takes_beta", "run_segment",
           "check_config", "expand", "cell_from_path", "final_step", "step_number", "train_settings",
           "sample_settings", "sampling_label", "load_yaml_strict"]

MAX_TOKENS = "max"  # a regime's max_tokens (sample --max-tokens max): the context minus the longest prompt
SAMPLING_KEYS = ("temperature", "top_p", "template", "max_tokens")  # what a regime may override


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
    seed: int | None = None  # training seed of a sweep with a seeds axis (None: training.seed)
    regime: str | None = None  # evaluation regime of a base cell (None: the evaluation section's sampling)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.run}"

    @property
    def group(self) -> str:
        """The id without the seed: the cells of one configuration that differ only in their training seed
        (its replicates) share it."""
        if self.seed is None:
            return self.id
        return self.id[: -len(f"{LAYOUT.SEED_SUFFIX}{self.seed}")]

    @property
    def is_base(self) -> bool:
        return self.train_set is None


def method_takes_beta(method_cfg: dict) -> bool:
    """Whether a method's estimator takes ``beta`` (the registry decides, not the method's key)."""
    est = method_cfg.get("estimator")
    return bool(est) and takes_beta(est)


def run_segment(model_cfg: dict, train_set: str | None, method: str, beta: float | None,
                layout: Layout = LAYOUT, seed: int | None = None, regime: str | None = None) -> str:
    """Path of a cell below results/<model>/: ``base``, ``base-regime-t06``, ``grpo``, ``beta4``,
    ``dapo17k/beta2``, ``beta4-seed1``... (see Layout)."""
    return layout.run_segment(method, beta, train_set, model_cfg["train_set"], seed, regime)


def _known(section: dict) -> str:
    return ", ".join(sorted(section)) or "none"


def _check_regime(key: str, regime: dict, fail) -> None:
    """One entry of ``regimes``: only sampling keys (and a label), each a value the sampler takes (the
    schema's enum checks a template: the core does not import the prompts of stage prepare)."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for name, value in regime.items():
        where = f"regimes.{key}.{name}"
        if name not in (*SAMPLING_KEYS, "label"):
            fail(where, f"unknown key {name!r} (a regime sets {', '.join(SAMPLING_KEYS)} and an optional label)")
        if name == "temperature" and not (number(value) and value >= 0):
            fail(where, f"must be a number >= 0 (0 = greedy), got {value!r}")
        if name == "top_p" and not (number(value) and 0 < value <= 1):
            fail(where, f"must be a number in (0, 1], got {value!r}")
        if name == "max_tokens" and value != MAX_TOKENS and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            fail(where, f"must be a positive integer or {MAX_TOKENS!r} (the model's context minus the "
                        f"prompt), got {value!r}")


def check_config(config: dict, source: str = "config") -> None:
    """Cross-checks beyond the JSON schema; raise ConfigError naming ``source``, the key and the value."""

    def fail(key: str, message: str):
        raise ConfigError(f"{source}: {key}: {message}")

    models, train_sets = config.get("models", {}), config.get("train_sets", {})
    regimes = config.get("regimes") or {}
    for key, regime in regimes.items():
        _check_regime(key, regime, fail)
    benchmarks, methods = config.get("benchmarks", {}), config.get("methods", {})
    for key, model in models.items():
        if model["train_set"] not in train_sets:
            fail(f"models.{key}.train_set", f"unknown train set {model['train_set']!r} (known: {_known(train_sets)})")
    for key, bench in benchmarks.items():
        bad = [k for k in bench["ks"] if k > bench["n"]]
        if bad:
            fail(f"benchmarks.{key}.ks",
                 f"k={bad[0]} exceeds the {bench['n']} samples per problem (benchmarks.{key}.n)")
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
                fail(f"methods.{key}.params.{param}",
                     f"estimator {est!r} takes no parameter {param!r} (it takes: {', '.join(accepted) or 'none'})")
        if "beta" in method.get("params", {}):
            fail(f"methods.{key}.params.beta", "set beta in a sweep's betas list, not in the method")
        optional = default_params(est)
        required = [p for p in accepted if p not in optional and p not in method.get("params", {})]
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
        need_beta = [m for m in trained if method_takes_beta(methods[m])]
        if sweep.get("betas") and not need_beta:
            fail(f"{where}.betas", f"{sweep['betas']} given, but none of the methods {sweep['methods']} takes beta")
        if need_beta and not sweep.get("betas"):
            fail(f"{where}.betas", f"methods {need_beta} need beta: add a betas list to the sweep")
        if sweep.get("seeds") and not trained:
            fail(f"{where}.seeds", f"{sweep['seeds']} given, but the sweep trains no method (the base model "
                                   "is not trained, so it has no training seed)")
        for j, name in enumerate(sweep.get("regimes", [])):
            if name not in regimes:
                fail(f"{where}.regimes[{j}]", f"unknown regime {name!r} (known: {_known(regimes)})")
            cap = regimes[name].get("max_tokens")
            for model in sweep["models"]:
                context = models[model].get("context_length")
                if isinstance(cap, int) and context and cap >= context:
                    fail(f"regimes.{name}.max_tokens", f"{cap} new tokens leave no room for a prompt in the "
                                                       f"{context}-token context of model {model!r} "
                                                       f"(models.{model}.context_length): lower it or use "
                                                       f"{MAX_TOKENS!r}")
        if sweep.get("regimes") and trained:
            fail(f"{where}.regimes", f"{sweep['regimes']} given, but the sweep trains {trained}: a regime samples "
                                     "the base model only; give the regimes a sweep of methods [base]")
        for j, step in enumerate(sweep.get("eval_steps", [])):
            if step != FINAL and steps_total is not None and int(step) > steps_total:
                fail(f"{where}.eval_steps[{j}]", f"step {step} is beyond training.steps = {steps_total}")
            if step != FINAL and every and int(step) % every:
                fail(f"{where}.eval_steps[{j}]",
                     f"step {step} is not a multiple of training.checkpoint_every = {every}, "
                     "so no checkpoint exists there")


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
                if method == "base":  # the base model, under each of the sweep's regimes
                    combos = [(None, None, regime) for regime in sweep.get("regimes") or [None]]
                else:
                    betas = sweep["betas"] if method_takes_beta(methods[method]) else [None]
                    combos = [(ts, None if b is None else float(b), None) for ts in train_sets for b in betas]
                seeds = [None] if method == "base" else sweep.get("seeds") or [None]
                for (train_set, beta, regime), seed in ((combo, seed) for combo in combos for seed in seeds):
                    key = (model, train_set, method, beta, seed, regime)
                    entry = cells.setdefault(key, {"steps": []})
                    for s in ([FINAL] if method == "base" else steps):
                        if s not in entry["steps"]:
                            entry["steps"].append(s)
    out = []
    for (model, train_set, method, beta, seed, regime), entry in cells.items():
        run = run_segment(models[model], train_set, method, beta, seed=seed, regime=regime)
        steps = sorted(entry["steps"], key=lambda s: (s == FINAL, int(s) if s != FINAL else 0))
        out.append(Cell(model, train_set, method, beta, run, tuple(steps), seed, regime))
    seeded = {c.group for c in out if c.seed is not None}
    mixed = [c.id for c in out if c.seed is None and c.group in seeded]
    if mixed:
        raise ConfigError(f"{source}: sweeps: {mixed[0]!r} is trained without a seeds list by one sweep and with "
                          "one by another, so its replicates would mix; give every sweep of it the same seeds")
    ids = [c.id for c in out]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise ConfigError(f"{source}: sweeps: two cells share the result path {sorted(dupes)[0]!r}; rename a method")
    return out


def cell_from_path(config: dict, model: str, run: str, cells: Iterable[Cell] = (),
                   layout: Layout = LAYOUT) -> Cell:
    """The cell behind ``results/<model>/<run>/``, also for cells no sweep lists.

    ``run`` is ``[<train_set>/]<leaf>`` with leaf ``base``, ``base-regime-<name>`` (a regime of the
    config's ``regimes``), ``<method>``, ``<method>-beta<b>`` or
    ``beta<b>`` (the short form of :attr:`Layout.BARE_BETA_METHOD`, see :meth:`Layout.run_leaf`), each
    but the base leaves optionally with ``-seed<s>`` (training seed ``s``); a
    cell of the grid keeps its sweeps' evaluation steps, any other cell gets ``evaluation.steps``.
    Raises ConfigError for names the config does not define.
    """
    for cell in cells:
        if cell.model == model and cell.run == run:
            return cell
    models, methods, train_sets = config["models"], config["methods"], config["train_sets"]
    where = layout.cell_dir(f"{model}/{run}")
    if model not in models:
        raise ConfigError(f"{where}: unknown model {model!r} (known: {_known(models)})")
    parts = run.split("/")
    if len(parts) > 2:
        raise ConfigError(f"{where}: expected {layout.cell_dir('<model>')}/[<train_set>/]<method>")
    train_set = parts[0] if len(parts) == 2 else models[model]["train_set"]
    leaf, seed = layout.split_seed(parts[-1])
    if train_set not in train_sets:
        raise ConfigError(f"{where}: unknown train set {train_set!r} (known: {_known(train_sets)})")
    leaf, regime = layout.split_regime(leaf)
    regimes = config.get("regimes") or {}
    if regime is not None and (regime not in regimes or seed is not None or len(parts) == 2):
        problem = (f"unknown regime {regime!r} (known: {_known(regimes)})" if regime not in regimes
                   else f"a regime cell is {layout.cell_dir(f'{model}/{layout.base_run(regime)}')}")
        raise ConfigError(f"{where}: {problem}")
    if regime is not None:
        return Cell(model, None, "base", None, layout.base_run(regime), (FINAL,), None, regime)
    if leaf == layout.BASE_RUN:
        if seed is not None:
            raise ConfigError(f"{where}: the base model is not trained, so it has no training seed: use "
                              f"{layout.cell_dir(f'{model}/{layout.BASE_RUN}')}")
        if len(parts) == 2:
            raise ConfigError(f"{where}: the base model has no train set: use "
                              f"{layout.cell_dir(f'{model}/{layout.BASE_RUN}')}")
        return Cell(model, None, "base", None, layout.BASE_RUN, (FINAL,))
    method, beta_text = layout.parse_run_leaf(leaf, methods)
    beta = None
    if beta_text is not None:
        try:
            beta = float(beta_text)
        except ValueError:
            raise ConfigError(f"{where}: cannot read a beta from {leaf!r}") from None
        if beta < 0:
            raise ConfigError(f"{where}: beta must be >= 0, got {beta_text}")
    if method not in methods or method == "base":
        raise ConfigError(f"{where}: unknown method {method!r} (known: {_known(methods)})")
    if method_takes_beta(methods[method]) != (beta is not None):
        need = "needs a beta (e.g. beta2)" if beta is None else "takes no beta"
        raise ConfigError(f"{where}: method {method!r} {need}")
    steps = tuple(str(s) for s in config.get("evaluation", {}).get("steps", [FINAL]))
    return Cell(model, train_set, method, beta, run_segment(models[model], train_set, method, beta, layout, seed),
                steps, seed)


def _training(config: dict, cell: Cell | None) -> dict:
    """The ``training`` keys of a cell: the defaults < its model's overrides < its method's."""
    settings = dict(config.get("training", {}))
    if cell is not None:
        settings.update(config["models"][cell.model].get("training", {}))
        settings.update(config["methods"][cell.method].get("training", {}))
    return settings


def final_step(config: dict, cell: Cell | None = None) -> int:
    """Training steps of a cell (model and method overrides included)."""
    return int(_training(config, cell).get("steps", 100))


def step_number(config: dict, step: str, cell: Cell | None = None) -> int:
    return final_step(config, cell) if step == FINAL else int(step)


def train_settings(config: dict, cell: Cell, layout: Layout = LAYOUT) -> dict:
    """The ``python -m rsgrpo train`` config of a cell: training defaults < model overrides < method
    overrides (a policy loss, ``dynamic_sampling: false``...) < cell."""
    model = config["models"][cell.model]
    method = config["methods"][cell.method]
    settings = _training(config, cell)
    params = dict(method.get("params", {}))
    if cell.beta is not None:
        params["beta"] = cell.beta
    if cell.seed is not None:
        settings["seed"] = cell.seed
    train_data: str | dict = layout.train_data(cell.train_set)
    extras = config["train_sets"][cell.train_set].get("extra_fields")
    if extras:  # the prepared JSONL holds them under their record names: keep them for the rewards
        train_data = {"source": "local", "path": train_data, "extra_fields": {name: name for name in extras}}
    settings.update(
        model_dir=layout.model_dir(cell.model),
        train_data=train_data,
        prompt_template=model.get("template", "chat"),
        estimator=method["estimator"],
        estimator_params=params,
    )
    settings.pop("run_dir", None)
    return settings


def sample_settings(config: dict, cell: Cell) -> dict:
    """What the sample job of a cell draws with (:data:`SAMPLING_KEYS`): ``evaluation``'s temperature,
    top_p and max_tokens and the model's template, overridden by the cell's regime; ``max_tokens`` may
    be :data:`MAX_TOKENS` (the sampler's ``--max-tokens max``)."""
    evaluation = config.get("evaluation", {})
    settings = {"temperature": evaluation.get("temperature"), "top_p": evaluation.get("top_p"),
                "template": config["models"][cell.model].get("template", "chat"),
                "max_tokens": evaluation.get("max_tokens")}
    if cell.regime is not None:
        settings.update((k, v) for k, v in config["regimes"][cell.regime].items() if k in SAMPLING_KEYS)
    return settings


def sampling_label(config: dict, cell: Cell) -> str:
    """A regime cell's sampling in words (the regime's ``label`` if it has one): ``T 0.6, top-p 0.95,
    plain, max_tokens 3072``; "" for a cell without a regime."""
    if cell.regime is None:
        return ""
    if config["regimes"][cell.regime].get("label"):
        return config["regimes"][cell.regime]["label"]
    s = sample_settings(config, cell)
    return f"T {s['temperature']:g}, top-p {s['top_p']:g}, {s['template']}, max_tokens {s['max_tokens']}"


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
