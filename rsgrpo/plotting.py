"""The house style of every figure (matplotlib, headless) and the one way figures are saved.

Used by the figure-writing verbs: :mod:`rsgrpo.analysis.plot_advantages` (Fig. 2), :mod:`rsgrpo.bandit.bandit`
(Fig. 3) and :mod:`rsgrpo.analysis.figures` (Figs. 4, 5, 7 and the entropy plot of arXiv 2509.24261).
Importing this module selects the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rsgrpo.io import atomic_path  # noqa: E402

__all__ = ["house_style", "beta_colors", "save_figure"]


def house_style() -> None:
    """Set the shared rcParams (call before creating a figure)."""
    plt.rcParams.update(
        {
            "figure.dpi": 120,
            "savefig.dpi": 150,
            "font.size": 10,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "legend.frameon": False,
        }
    )


def beta_colors(n: int):
    """``n`` colours along viridis, one per beta (low beta dark, high beta light)."""
    cmap = plt.get_cmap("viridis")
    return [cmap(x) for x in np.linspace(0.0, 0.9, n)]


def save_figure(fig, path: str | Path, formats: Sequence[str] | None = None) -> list[Path]:
    """Save ``fig`` atomically to ``path`` (and to the same stem with each extra format), then close it."""
    path = Path(path)
    written = []
    for fmt in [path.suffix.lstrip(".")] + [f for f in (formats or []) if f != path.suffix.lstrip(".")]:
        target = path.with_suffix("." + fmt)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written
