"""Synthetic result trees with KNOWN truth, for the aggregate / figures tests and the workflow tests.

A tree looks like what the workflow writes: per cell a final ``passk.csv`` + ``graded.parquet``, per
trained cell a ``metrics.csv`` and one eval folder per evaluated checkpoint, and the two index files
``cells.csv`` and ``benchmarks.csv`` (columns exactly as ``rsgrpo.analysis.cell_index`` documents them).

Truth: every model has latent per-problem success probabilities per benchmark (Beta-distributed,
seeded); a method maps them through its ``transform`` (so all cells of a model share the same
problems, as paired comparisons need), and a checkpoint at step s of S interpolates linearly between
the base and the final probabilities. Samples are Bernoulli draws; :class:`SyntheticTree` keeps the
probabilities and the drawn correct counts so tests can recompute everything independently.

Seeds: a :class:`CellSpec` with a ``seed`` is one replicate of its configuration (cell id
``<...>-seed<s>``, :attr:`CellSpec.group` without the suffix); its final probabilities are shifted by
``seed_offset`` (and its training curves by half that), so replicates of a group disagree by a known
amount. :func:`replicate` makes the replicates of a spec, :func:`seeded_cells` a small seeded grid.

Usage from a shell (e.g. to look at the figures): ``python tests/synthetic_results.py OUT_DIR``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from rsgrpo.evaluate.passk import bootstrap_ci, pass_at_k, powers_of_two

Transform = Callable[[np.ndarray], np.ndarray]


def identity(p: np.ndarray) -> np.ndarray:
    return p


def grpo_like(p: np.ndarray) -> np.ndarray:
    """Sharpened: easy problems get easier, rarely solved ones are forgotten (pass@1 up, pass@32 down)."""
    return np.where(p < 0.08, p * 0.2, p ** 0.35)


def rs_grpo_like(beta: float) -> Transform:
    """Sharpened less, and keeps (raises) the rarely solved problems, more so for larger beta."""
    def f(p: np.ndarray) -> np.ndarray:
        return np.where(p < 0.08, np.minimum(1.0, p * (1.0 + 0.25 * beta)), p ** (0.35 + 0.02 * beta))
    return f


def chen_like(p: np.ndarray) -> np.ndarray:
    return p ** 0.6


@dataclass
class BenchSpec:
    key: str
    published_name: str
    n_problems: int
    n: int  # samples per problem
    ks: list[int] | None = None  # None: powers of two up to n

    def k_list(self) -> list[int]:
        return self.ks or powers_of_two(self.n)


# method key -> estimator, as config/grid.yaml maps them; a CellSpec without an estimator gets its
# method's (the analysis selects by estimator; method keys are free names)
METHOD_ESTIMATORS = {"grpo": "grpo", "rs_grpo": "rs_grpo", "chen": "passk_chen", "mahdavi": "passk_mahdavi",
                     "walder": "pkpo_walder", "rloo": "rloo"}


@dataclass
class CellSpec:
    model: str
    model_name: str
    method: str
    label: str
    train_set: str = ""
    beta: float | None = None
    estimator: str = ""
    published_method: str = ""
    published_model: str = ""
    transform: Transform = identity
    eval_steps: tuple[int, ...] = ()  # evaluated checkpoints; the last is the final one ((): base)
    diversity: int = 4  # distinct correct solution texts per problem the policy can produce
    seed: int | None = None  # training seed of a replicate (None: no seeds axis)
    seed_offset: float = 0.0  # added to this replicate's final probabilities (clipped to [0, 1])
    regime: str = ""  # evaluation regime of a base cell (cell <model>/base-regime-<regime>)

    def __post_init__(self):
        if not self.estimator and self.method != "base":
            self.estimator = METHOD_ESTIMATORS.get(self.method, "")

    @property
    def group(self) -> str:
        if self.method == "base":
            return f"{self.model}/base" + (f"-regime-{self.regime}" if self.regime else "")
        beta = "" if self.beta is None else f"_beta{self.beta:g}"
        return f"{self.model}/{self.train_set}/{self.method}{beta}"

    @property
    def cell(self) -> str:
        return self.group if self.seed is None else f"{self.group}-seed{self.seed}"


@dataclass
class SyntheticTree:
    root: Path
    cells_csv: Path
    benchmarks_csv: Path
    cells: list[CellSpec]
    benchmarks: list[BenchSpec]
    problem_ids: dict[str, np.ndarray]  # benchmark -> ids (sorted)
    probs: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)  # (cell, step, bench)
    counts: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)  # correct counts

    def final_step(self, cell: str) -> int:
        spec = next(c for c in self.cells if c.cell == cell)
        return spec.eval_steps[-1] if spec.eval_steps else 0


def default_benchmarks() -> list[BenchSpec]:
    return [BenchSpec("aime24", "AIME24", 30, 32), BenchSpec("math500", "MATH500", 40, 32),
            BenchSpec("toy", "", 20, 16)]


def default_cells(steps: tuple[int, ...] = (10, 20, 30)) -> list[CellSpec]:
    """Two published models: Qwen2.5-Math-7B/deepmath103k with a beta ablation and Chen2025, and
    Qwen2.5-Math-1.5B/deepmath103k with Base, GRPO and RS-GRPO (beta = 2)."""
    q7 = dict(model="qwen7b", model_name="Qwen2.5-Math-7B", published_model="Qwen2.5-Math-7B")
    q15 = dict(model="qwen15b", model_name="Qwen2.5-Math-1.5B", published_model="Qwen2.5-Math-1.5B")
    trained = dict(train_set="deepmath103k", eval_steps=steps)
    return [
        CellSpec(**q7, method="base", label="Base", published_method="Base", diversity=6),
        CellSpec(**q7, **trained, method="grpo", estimator="grpo", label="GRPO", published_method="GRPO",
                 transform=grpo_like, diversity=2),
        CellSpec(**q7, **trained, method="rs_grpo", estimator="rs_grpo", beta=2.0, label="RS-GRPO (β=2)",
                 published_method="RS-GRPO", transform=rs_grpo_like(2.0), diversity=4),
        CellSpec(**q7, **trained, method="rs_grpo", estimator="rs_grpo", beta=4.0, label="RS-GRPO (β=4)",
                 transform=rs_grpo_like(4.0), diversity=5),
        CellSpec(**q7, **trained, method="chen", estimator="passk_chen", label="Chen2025", published_method="Chen2025",
                 transform=chen_like, diversity=3),
        CellSpec(**q15, method="base", label="Base", published_method="Base", diversity=6),
        CellSpec(**q15, **trained, method="grpo", estimator="grpo", label="GRPO", published_method="GRPO",
                 transform=grpo_like, diversity=2),
        CellSpec(**q15, **trained, method="rs_grpo", estimator="rs_grpo", beta=2.0, label="RS-GRPO (β=2)",
                 published_method="RS-GRPO", transform=rs_grpo_like(2.0), diversity=4),
    ]


def replicate(spec: CellSpec, seeds: tuple[int, ...] = (0, 1, 2), spread: float = 0.0) -> list[CellSpec]:
    """Replicates of ``spec`` with seeds ``seeds``, offsets spread evenly over ``[-spread, +spread]``
    (their mean is 0, so before clipping the seeds' mean probability is the spec's)."""
    mid = (len(seeds) - 1) / 2
    return [dataclasses.replace(spec, seed=s, seed_offset=spread * ((i - mid) / mid if mid else 0.0))
            for i, s in enumerate(seeds)]


def seeded_cells(seeds: tuple[int, ...] = (0, 1, 2), spread: float = 0.1, steps: tuple[int, ...] = (2, 4),
                 rs_betas: tuple[float, ...] = (2.0, 4.0), *, model: str = "demo", model_name: str = "Demo",
                 train_set: str = "arith", published: bool = False) -> list[CellSpec]:
    """One setting ``<model_name>/<train_set>``: Base, and GRPO and RS-GRPO at ``rs_betas`` each trained
    with ``seeds``. ``published``: the model is the paper's ``model_name`` and Base, GRPO and RS-GRPO
    (beta 2) are its published methods."""
    pub = dict(published_model=model_name) if published else {}
    q = dict(model=model, model_name=model_name, **pub)
    trained = dict(**q, train_set=train_set, eval_steps=steps)
    cells = [CellSpec(**q, method="base", label="Base", diversity=6, published_method="Base" if published else "")]
    cells += replicate(CellSpec(**trained, method="grpo", label="GRPO", transform=grpo_like, diversity=2,
                                published_method="GRPO" if published else ""), seeds, spread)
    for beta in rs_betas:
        cells += replicate(CellSpec(**trained, method="rs_grpo", beta=beta, label=f"RS-GRPO (β={beta:g})",
                                    transform=rs_grpo_like(beta), diversity=4,
                                    published_method="RS-GRPO" if published and beta == 2 else ""), seeds, spread)
    return cells


def _graded_frame(bench: BenchSpec, ids: np.ndarray, probs: np.ndarray, diversity: int,
                  rng: np.random.Generator) -> pd.DataFrame:
    """n Bernoulli(p) samples per problem; correct texts are one of ``diversity`` solution variants,
    with random extra whitespace (which the unique-answer count must normalise away)."""
    n = bench.n
    correct = rng.random((len(ids), n)) < probs[:, None]
    variant = rng.integers(0, diversity, size=(len(ids), n))
    spaced = rng.random((len(ids), n)) < 0.3
    texts, extracted = [], []
    for i, pid in enumerate(ids):
        for j in range(n):
            if correct[i, j]:
                gap = "  \n " if spaced[i, j] else " "
                texts.append(f"Solution path {variant[i, j]} for {pid}.{gap}The answer is \\boxed{{{i}}}")
                extracted.append(str(i))
            else:
                wrong = int(rng.integers(1000, 1100))
                texts.append(f"Attempt {j} for {pid}: \\boxed{{{wrong}}}")
                extracted.append(str(wrong))
    return pd.DataFrame({
        "benchmark": bench.key, "problem_id": np.repeat(ids, n), "sample_idx": np.tile(np.arange(n), len(ids)),
        "text": texts, "extracted": extracted, "correct": correct.ravel(),
    })


def _passk_frame(bench: BenchSpec, counts: np.ndarray, n_boot: int, seed: int) -> pd.DataFrame:
    ks = [k for k in bench.k_list() if k <= bench.n]
    per_problem = pass_at_k(bench.n, counts, ks)
    ci = bootstrap_ci(per_problem, n_boot=n_boot, seed=seed)
    return pd.DataFrame({"benchmark": bench.key, "k": ks, "pass_at_k": ci.mean, "ci_low": ci.low,
                         "ci_high": ci.high, "n_problems": len(counts), "n_samples": bench.n})


def _write_eval(folder: Path, frames: list[tuple[pd.DataFrame, pd.DataFrame]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat([g for g, _ in frames], ignore_index=True).to_parquet(folder / "graded.parquet", index=False)
    pd.concat([p for _, p in frames], ignore_index=True).to_csv(folder / "passk.csv", index=False)


def _metrics_frame(spec: CellSpec, total_steps: int, rng: np.random.Generator) -> pd.DataFrame:
    """Training curves: solve rate rising faster for larger beta, entropy falling slower for more
    exploratory runs (larger ``diversity``)."""
    steps = np.arange(1, total_steps + 1)
    beta = spec.beta if spec.beta is not None else 0.0
    rate = 0.05 * (1.0 + 0.3 * beta)
    cumulative = 0.3 + 0.6 * (1.0 - np.exp(-rate * steps))
    reward = 0.2 + 0.4 * (1.0 - np.exp(-0.1 * steps)) + rng.normal(0, 0.02, len(steps))
    cumulative = cumulative + 0.5 * spec.seed_offset
    entropy = 0.2 + 0.8 * np.exp(-steps / (4.0 * spec.diversity + 2.0 * beta)) + 0.5 * spec.seed_offset
    return pd.DataFrame({
        "step": steps, "beta": spec.beta if spec.beta is not None else np.nan, "reward_mean": reward,
        "solved_frac": np.clip(reward + 0.1, 0, 1), "cumulative_solve_rate": cumulative, "groups_kept": 8,
        "entropy": entropy, "response_len_mean": 300 - steps,
    })


def write_tree(root: str | Path, cells: list[CellSpec] | None = None, benchmarks: list[BenchSpec] | None = None,
               *, seed: int = 0, n_boot: int = 200) -> SyntheticTree:
    """Write a result tree under ``root`` and return it with its truth."""
    root = Path(root)
    cells = default_cells() if cells is None else cells
    benchmarks = default_benchmarks() if benchmarks is None else benchmarks
    ids = {b.key: np.array(sorted(f"{b.key}-{i:03d}" for i in range(b.n_problems))) for b in benchmarks}
    models = list(dict.fromkeys(c.model for c in cells))
    latent = {(m, b.key): np.random.default_rng([seed, mi, bi]).beta(0.5, 2.5, size=b.n_problems)
              for mi, m in enumerate(models) for bi, b in enumerate(benchmarks)}
    tree = SyntheticTree(root, root / "cells.csv", root / "benchmarks.csv", cells, benchmarks, ids)
    rows = []
    for ci, spec in enumerate(cells):
        cell_dir = root / spec.cell
        steps = list(spec.eval_steps) or [0]
        total = steps[-1]
        step_dirs = []
        for si, step in enumerate(steps):
            frames = []
            for bi, b in enumerate(benchmarks):
                base = latent[(spec.model, b.key)]
                final = np.clip(spec.transform(base) + spec.seed_offset, 0.0, 1.0)
                probs = base + (final - base) * (step / total if total else 1.0)
                rng = np.random.default_rng([seed, 1000 + ci, si, bi])
                graded = _graded_frame(b, ids[b.key], probs, spec.diversity, rng)
                counts = graded.groupby("problem_id", sort=True)["correct"].sum().to_numpy()
                tree.probs[(spec.cell, step, b.key)] = probs
                tree.counts[(spec.cell, step, b.key)] = counts
                frames.append((graded, _passk_frame(b, counts, n_boot, seed)))
            folder = cell_dir / ("eval" if not spec.eval_steps else f"eval/step_{step}")
            _write_eval(folder, frames)
            step_dirs.append((step, folder))
        metrics = ""
        if spec.eval_steps:
            metrics_path = cell_dir / "train" / "metrics.csv"
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            _metrics_frame(spec, total, np.random.default_rng([seed, 2000 + ci])).to_csv(metrics_path, index=False)
            metrics = str(metrics_path)
        final_dir = step_dirs[-1][1]
        rows.append({
            "cell": spec.cell, "model": spec.model, "model_name": spec.model_name, "train_set": spec.train_set,
            "method": spec.method, "estimator": spec.estimator,
            "beta": "" if spec.beta is None else f"{spec.beta:g}",
            "seed": "" if spec.seed is None else spec.seed, "group": spec.group, "label": spec.label,
            "published_method": spec.published_method, "published_model": spec.published_model,
            "passk": str(final_dir / "passk.csv"), "graded": str(final_dir / "graded.parquet"),
            "metrics": metrics,
            "step_evals": ";".join(f"{s}:{d}" for s, d in step_dirs) if spec.eval_steps else "",
            "regime": spec.regime,
        })
    pd.DataFrame(rows).to_csv(tree.cells_csv, index=False)
    pd.DataFrame([{"benchmark": b.key, "published_name": b.published_name, "n": b.n,
                   "ks": ";".join(map(str, b.k_list()))} for b in benchmarks]).to_csv(tree.benchmarks_csv, index=False)
    return tree


def rename_methods(cells: list[CellSpec], renames: dict[str, str]) -> list[CellSpec]:
    """Copy of ``cells`` with method keys renamed (``{"rs_grpo": "risky"}``); estimators are kept, so
    the analysis must give the same numbers (the cell ids change with the key)."""
    return [dataclasses.replace(c, method=renames.get(c.method, c.method)) for c in cells]


def replace_cells(tree_cells: list[CellSpec], **changes_by_cell) -> list[CellSpec]:
    """Copy of ``tree_cells`` with per-cell field changes: ``replace_cells(cells, **{"m/base": {...}})``."""
    return [dataclasses.replace(c, **changes_by_cell.get(c.cell, {})) for c in tree_cells]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic_results")
    t = write_tree(out)
    print(t.cells_csv)
    print(t.benchmarks_csv)
