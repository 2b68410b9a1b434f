"""The workflow's file layout: the one place where every result, run, model, data and log path is spelled.

The Snakefile imports this module at parse time, so it uses the standard library only. Rules and the
helpers of ``workflow/rules/common.smk`` call :class:`Layout` methods (with wildcard strings where a
rule needs a pattern, e.g. ``LAYOUT.passk(LAYOUT.cell_dir("{model}/{evalrun}"))``), the verbs that
write a fixed set of files into an output folder take the file names from the constants below, and
the analysis (:mod:`rsgrpo.analysis.cell_index`, :mod:`rsgrpo.analysis.figures`) reads evaluation folders through
:meth:`Layout.passk` and friends. Nothing else spells these names.

The tree, relative to the working directory (defaults of :class:`Layout`)::

    results/<model>/<run>/                      a cell's final evaluation and its training outputs
        samples/<bench>.parquet                 n completions per problem (sample)
        graded.parquet, passk.csv               graded samples and pass@k with CIs (score)
        manifest.json, metrics.csv              training outputs (train; not for the base model)
        step000100/                             an intermediate checkpoint's evaluation (same files)
    results/aggregate/                          cells.csv, benchmarks.csv (cell_index), tables (aggregate),
                                                regime_comparison.csv/.md (regime_comparison)
    results/figures/                            advantages.png/.pdf (plot_advantages), results/ (figures)
    results/bandit/                             bandit.csv, bandit.png (bandit)
    runs/<model>/<run>/checkpoints/step-000100/ resumable training state (outside the declared outputs)
    runs/<model>/<run>/rollouts/, tensorboard/  training rollout samples, TensorBoard events
    models/<model>/                             prepared Hugging Face checkpoints
    data/train/<name>.jsonl, data/benchmarks/<name>.jsonl
    logs/<rule>[/...].log

``<run>`` is ``base`` for the untrained model (``base-regime-<name>`` for it sampled under the
evaluation regime ``<name>`` of the config's ``regimes``, each regime its own cell with its own samples
and scores), else ``[<train_set>/]<leaf>``: the train set is left
out when it is the model's default, and the leaf is the config's method key, with ``-beta<b>`` for
an estimator that takes beta, and ``-seed<s>`` for a cell of a sweep with a ``seeds`` axis (its
training seed; replicates of one configuration differ only there). One method key is spelled
short: :attr:`Layout.BARE_BETA_METHOD` (``rs_grpo``) is just ``beta<b>``, so
``results/qwen7b/beta4/passk.csv`` is the paper's method at beta 4 on qwen7b's default train set and
``results/qwen7b/dapo17k/grpo/`` is GRPO on dapo17k.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

__all__ = [
    "FINAL", "CHECKPOINTS", "checkpoint_name", "checkpoint_step", "fmt_beta", "split_eval", "Layout", "LAYOUT",
    "PASSK", "GRADED", "SAMPLES", "METRICS", "MANIFEST", "ROLLOUTS", "CELLS_INDEX", "BENCHMARKS_INDEX",
    "AGGREGATE_TABLES", "REGIME_COMPARISON", "BANDIT_CSV", "BANDIT_PNG", "ADVANTAGES",
]

FINAL = "final"  # the evaluation step of a cell's last checkpoint (its files are the cell's own)

# file names inside an evaluation folder / a cell folder
PASSK = "passk.csv"
GRADED = "graded.parquet"
SAMPLES = "samples"  # folder of samples/<bench>.parquet
METRICS = "metrics.csv"
MANIFEST = "manifest.json"
RUN_LOG = "train.log"  # <run_dir>/train.log: every attempt's output, each after a header (rsgrpo.train.run_log)
ROLLOUTS = "rollouts"  # <run_dir>/rollouts/step-000010.jsonl: training rollout samples (rsgrpo.train.rollout_log)
# files the aggregate-level verbs write into their output folder
CELLS_INDEX = "cells.csv"
BENCHMARKS_INDEX = "benchmarks.csv"
AGGREGATE_TABLES = ("table2", "rsgrpo_vs_grpo", "published_comparison")  # each as .csv and .md
REGIME_COMPARISON = "regime_comparison"  # .csv and .md (regime_comparison): the regimes vs the paper's base rows
BANDIT_CSV = "bandit.csv"
BANDIT_PNG = "bandit.png"
ADVANTAGES = "advantages"  # advantages.png + advantages.pdf

# training checkpoints: <run_dir>/checkpoints/step-000100 (rsgrpo.train.checkpoint writes and finds them)
CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"^step-(\d{6,})$")
_EVAL_STEP = re.compile(r"^step(\d+)$")


def checkpoint_name(step: int) -> str:
    """Folder name of the training checkpoint at ``step``: ``step-000100``."""
    return f"step-{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """Inverse of :func:`checkpoint_name`: the step of a folder named ``step-NNNNNN``, else None."""
    match = _CHECKPOINT.match(name)
    return int(match.group(1)) if match else None


def eval_step_name(step: int | str) -> str:
    """Folder name of an intermediate checkpoint's evaluation: ``step000100``."""
    return f"step{int(step):06d}"


def fmt_beta(beta: float) -> str:
    """Beta as a path segment and label: 4.0 -> ``4``, 0.5 -> ``0.5``."""
    return f"{beta:g}"


def split_eval(evalrun: str) -> tuple[str, str]:
    """``beta4`` -> (``beta4``, "final"); ``dapo17k/beta2/step000100`` -> (``dapo17k/beta2``, "100")."""
    head, _, last = evalrun.rpartition("/")
    m = _EVAL_STEP.match(last)
    if head and m:
        return head, str(int(m.group(1)))
    return evalrun, FINAL


@dataclasses.dataclass(frozen=True)
class Layout:
    """File layout of the workflow (relative to the working directory); see the module docstring.

    Every method is plain string formatting, so arguments may be wildcard patterns: a rule writes
    ``LAYOUT.graded(LAYOUT.cell_dir("{model}/{evalrun}"))`` for ``results/{model}/{evalrun}/graded.parquet``.
    """

    results: str = "results"
    runs: str = "runs"
    models: str = "models"
    data: str = "data"
    logs: str = "logs"

    # The path rule for method keys: this key's cells are results/<model>/beta<b>/ (the paper's
    # method, whose beta sweeps are the common case); any other method whose estimator takes beta is
    # <method>-beta<b>. It is a *path* convention only: the analysis identifies methods by their
    # estimator (the cells.csv column), never by this key.
    BARE_BETA_METHOD: ClassVar[str] = "rs_grpo"
    BASE_RUN: ClassVar[str] = "base"  # run segment of the untrained model (one per model)
    TRAIN_DATA: ClassVar[str] = "train"  # data/<kind>/: the two kinds of prepared data
    BENCHMARK_DATA: ClassVar[str] = "benchmarks"
    EVAL_STEP_REGEX: ClassVar[str] = r"step\d+"  # an intermediate evaluation's folder (for wildcards)
    SEED_SUFFIX: ClassVar[str] = "-seed"  # leaf suffix of a training seed (method keys hold no "-")
    REGIME_SUFFIX: ClassVar[str] = "-regime-"  # base-regime-<name>: the base model under an evaluation regime

    # ------------------------------------------------------------------ inputs: models and data
    def model_dir(self, model: str) -> str:
        return f"{self.models}/{model}"

    def data_file(self, kind: str, name: str) -> str:
        """``data/<kind>/<name>.jsonl``, kind :attr:`TRAIN_DATA` or :attr:`BENCHMARK_DATA`."""
        return f"{self.data}/{kind}/{name}.jsonl"

    def train_data(self, name: str) -> str:
        return self.data_file(self.TRAIN_DATA, name)

    def benchmark_data(self, name: str) -> str:
        return self.data_file(self.BENCHMARK_DATA, name)

    # ------------------------------------------------------------------------- run segments
    def run_leaf(self, method: str, beta: float | None, seed: int | None = None) -> str:
        """Last path segment of a trained cell: ``grpo``, ``beta4`` (:attr:`BARE_BETA_METHOD`), ``m-beta2``;
        a cell of a sweep with ``seeds`` adds ``-seed<s>``: ``beta4-seed1``."""
        if beta is None:
            leaf = method
        else:
            leaf = f"beta{fmt_beta(beta)}" if method == self.BARE_BETA_METHOD else f"{method}-beta{fmt_beta(beta)}"
        return leaf if seed is None else f"{leaf}{self.SEED_SUFFIX}{seed}"

    def split_seed(self, leaf: str) -> tuple[str, int | None]:
        """``beta4-seed1`` -> (``beta4``, 1); a leaf without a seed -> (leaf, None)."""
        head, sep, tail = leaf.rpartition(self.SEED_SUFFIX)
        return (head, int(tail)) if sep and head and tail.isdigit() else (leaf, None)

    def parse_run_leaf(self, leaf: str, methods) -> tuple[str, str | None]:
        """Inverse of :meth:`run_leaf` without its seed (:meth:`split_seed`): (method key, beta text or
        None); ``methods`` = the config's keys."""
        if leaf.startswith("beta") and self.BARE_BETA_METHOD in methods:
            return self.BARE_BETA_METHOD, leaf[len("beta"):]
        if "-beta" in leaf:
            method, beta_text = leaf.split("-beta", 1)
            return method, beta_text
        return leaf, None

    def base_run(self, regime: str | None = None) -> str:
        """Run segment of the base model: ``base``, or ``base-regime-<name>`` under an evaluation regime."""
        return self.BASE_RUN if regime is None else f"{self.BASE_RUN}{self.REGIME_SUFFIX}{regime}"

    def split_regime(self, leaf: str) -> tuple[str, str | None]:
        """``base-regime-t06`` -> (``base``, ``t06``); any other leaf -> (leaf, None)."""
        head, sep, tail = leaf.partition(self.REGIME_SUFFIX)
        return (head, tail) if sep and head == self.BASE_RUN and tail else (leaf, None)

    def run_segment(self, method: str, beta: float | None, train_set: str | None, default_train_set: str,
                    seed: int | None = None, regime: str | None = None) -> str:
        """Cell path below ``results/<model>/``: ``base`` (``train_set`` None; :meth:`base_run` with a
        ``regime``), ``<leaf>`` on the model's default train set, else ``<train_set>/<leaf>`` (leaf:
        :meth:`run_leaf`)."""
        if train_set is None:
            return self.base_run(regime)
        leaf = self.run_leaf(method, beta, seed)
        return leaf if train_set == default_train_set else f"{train_set}/{leaf}"

    # ------------------------------------------------------------------------------- results
    def cell_dir(self, cell_id: str) -> str:
        """``results/<model>/<run>`` (also with an evaluation suffix: ``{model}/{evalrun}``)."""
        return f"{self.results}/{cell_id}"

    def eval_dir(self, cell_id: str, step: str) -> str:
        """Where a checkpoint's samples and scores go; the final checkpoint's are the cell's own files."""
        return self.cell_dir(cell_id) if step == FINAL else f"{self.cell_dir(cell_id)}/{eval_step_name(step)}"

    def samples(self, eval_dir: str, bench: str) -> str:
        return f"{eval_dir}/{SAMPLES}/{bench}.parquet"

    def graded(self, eval_dir: str) -> str:
        return f"{eval_dir}/{GRADED}"

    def passk(self, eval_dir: str) -> str:
        return f"{eval_dir}/{PASSK}"

    def metrics(self, cell_dir: str) -> str:
        return f"{cell_dir}/{METRICS}"

    def manifest(self, cell_dir: str) -> str:
        return f"{cell_dir}/{MANIFEST}"

    def aggregate_dir(self) -> str:
        return f"{self.results}/aggregate"

    def cells_index(self) -> str:
        return f"{self.aggregate_dir()}/{CELLS_INDEX}"

    def benchmarks_index(self) -> str:
        return f"{self.aggregate_dir()}/{BENCHMARKS_INDEX}"

    def aggregate_table(self, name: str, ext: str = "csv") -> str:
        """``results/aggregate/<name>.<ext>`` for ``name`` in :data:`AGGREGATE_TABLES`."""
        if name not in AGGREGATE_TABLES:
            raise ValueError(f"unknown aggregate table {name!r} (known: {', '.join(AGGREGATE_TABLES)})")
        return f"{self.aggregate_dir()}/{name}.{ext}"

    def regime_comparison(self, ext: str = "csv") -> str:
        """``results/aggregate/regime_comparison.<ext>``: which evaluation regimes reproduce the paper's base rows."""
        return f"{self.aggregate_dir()}/{REGIME_COMPARISON}.{ext}"

    def figures_dir(self) -> str:
        return f"{self.results}/figures"

    def result_figures_dir(self) -> str:
        """The ``figures`` verb's output folder (one PNG + PDF per figure, figures.txt)."""
        return f"{self.figures_dir()}/results"

    def advantages(self, ext: str) -> str:
        return f"{self.figures_dir()}/{ADVANTAGES}.{ext}"

    def plan_csv(self) -> str:
        """``python -m rsgrpo plan``'s table: memory per GPU and GPU-hours of every job."""
        return f"{self.results}/plan/plan.csv"

    def lora_vs_full(self, ext: str) -> str:
        """The plan's LoRA next to full fine-tuning for every model that trains (``csv`` or ``md``)."""
        return f"{self.results}/plan/lora_vs_full.{ext}"

    def bandit_dir(self) -> str:
        return f"{self.results}/bandit"

    def bandit_csv(self) -> str:
        return f"{self.bandit_dir()}/{BANDIT_CSV}"

    def bandit_png(self) -> str:
        return f"{self.bandit_dir()}/{BANDIT_PNG}"

    # ---------------------------------------------------------------------------- runs, logs
    def run_dir(self, cell_id: str) -> str:
        """The resumable training directory of a cell: ``runs/<model>/<run>``."""
        return f"{self.runs}/{cell_id}"

    def checkpoint_dir(self, cell_id: str, step: int) -> str:
        """``runs/<model>/<run>/checkpoints/step-NNNNNN``: the checkpoint an evaluation samples from."""
        return f"{self.run_dir(cell_id)}/{CHECKPOINTS}/{checkpoint_name(step)}"

    def log(self, name: str) -> str:
        """``logs/<name>.log``; ``name`` is the rule, plus its wildcards as folders (``train/{model}/{run}``)."""
        return f"{self.logs}/{name}.log"


LAYOUT = Layout()  # the default layout (Layout is frozen, so one shared instance is safe as a default)
