"""Where a training run's metrics and rollout samples go besides ``metrics.csv``: a registry of sinks.

A sink is a class registered under the name the config key ``logging`` uses, with three methods:
``scalars(step, values)`` (one step's metric row), ``text(step, tag, markdown)`` (a rollout sample)
and ``close()``. Rank 0 opens the sinks after resuming, so ``start_step`` (the steps already done)
tells a sink where the run picks up. A new sink is one registered class plus its test.

* ``tensorboard``: event files in ``<run_dir>/tensorboard`` (``tensorboard --logdir runs/`` shows
  every cell). A resumed run purges the events a killed process logged after its last checkpoint.
* ``wandb``: Weights & Biases, one W&B run per run directory (resumed by a stable id). Project from
  ``WANDB_PROJECT`` (default ``rsgrpo``); ``WANDB_MODE=offline`` writes to ``<run_dir>/wandb`` for a
  later ``wandb sync`` (compute nodes without internet).
* ``mlflow``: MLflow, one MLflow run per run directory (its id kept in ``<run_dir>/mlflow_run_id``).
  Experiment from ``MLFLOW_EXPERIMENT_NAME`` (default ``rsgrpo``), server or local store from
  ``MLFLOW_TRACKING_URI`` (offline: ``sqlite:///runs/mlflow.db``; MLflow 3 refuses its old ``file:``
  store). Rollout samples are artifacts (with a sqlite store, under ``./mlruns``).

A sink whose package is not installed is a clear error when it is asked for (:func:`check_available`,
called before any model loads), never a silent no-op.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import os
from pathlib import Path
from typing import Any

from rsgrpo.registry import refuse_taken

__all__ = ["SINKS", "register", "check_available", "open_sinks"]

SINKS: dict[str, type] = {}
# sink name -> (module it imports, how to install it)
_REQUIRES: dict[str, tuple[str, str]] = {}


def register(name: str, module: str, install: str):
    """Class decorator adding a sink to :data:`SINKS`; ``module`` is imported when the sink is used."""

    def wrap(cls):
        refuse_taken(SINKS, name, "sink")
        SINKS[name] = cls
        _REQUIRES[name] = (module, install)
        return cls

    return wrap


def check_available(names: list[str], key: str = "logging") -> None:
    """Raise ValueError naming the sink, the package and how to install it for a sink that cannot be
    imported."""
    for name in names:
        module, install = _REQUIRES[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"config key {key!r} asks for the {name!r} sink, but its package {module!r} does not "
                             f"import ({exc}); install it with {install} or remove {name!r} from {key}") from None


def open_sinks(names: list[str], run_dir: str | Path, *, run_name: str, config: dict[str, Any],
               start_step: int) -> list:
    """The sinks ``names`` for a run in ``run_dir`` that has ``start_step`` steps done."""
    check_available(names)
    return [SINKS[name](Path(run_dir), run_name=run_name, config=config, start_step=start_step) for name in names]


def run_name(run_dir: str | Path) -> str:
    """The run's name for tracking services: its directory relative to the working directory
    (``runs/<model>/<run>`` in the workflow), else its absolute path."""
    path = Path(run_dir).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _run_id(run_dir: Path) -> str:
    """A stable id per run directory, so a resumed run continues the same tracked run."""
    return "rsgrpo-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


@register("tensorboard", "tensorboard", "pip install 'rsgrpo' (tensorboard is a dependency)")
class TensorBoardSink:
    def __init__(self, run_dir: Path, *, run_name: str, config: dict, start_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events at steps > start_step that a killed process logged after its last
        # checkpoint: the resumed run logs those steps again.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        self.writer.flush()

    def text(self, step: int, tag: str, markdown: str) -> None:
        self.writer.add_text(tag, markdown, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register("wandb", "wandb", "pip install 'rsgrpo[wandb]'")
class WandbSink:
    def __init__(self, run_dir: Path, *, run_name: str, config: dict, start_step: int):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rsgrpo"), name=run_name, id=_run_id(run_dir),
                              resume="allow", dir=str(run_dir), config=config)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({f"train/{name}": value for name, value in values.items()}, step=step)

    def text(self, step: int, tag: str, markdown: str) -> None:
        self.run.log({tag: self.wandb.Html(f"<pre>{html.escape(markdown)}</pre>")}, step=step)

    def close(self) -> None:
        self.run.finish()


@register("mlflow", "mlflow", "pip install 'rsgrpo[mlflow]'")
class MLflowSink:
    def __init__(self, run_dir: Path, *, run_name: str, config: dict, start_step: int):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "rsgrpo"))
        id_file = run_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else None
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        if run_id is None:
            id_file.write_text(self.run.info.run_id + "\n")
            mlflow.log_params({key: str(value)[:500] for key, value in config.items()})

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"train/{name}": value for name, value in values.items()}, step=step)

    def text(self, step: int, tag: str, markdown: str) -> None:
        self.mlflow.log_text(markdown, f"{tag}/step-{step:06d}.md")

    def close(self) -> None:
        self.mlflow.end_run()
