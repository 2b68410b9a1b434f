"""Figures render with the expected panels; the advantage curves come from the estimators."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from rsgrpo import plots
from rsgrpo.advantages import binary_closed_form
from rsgrpo.bandit import BanditSpec, simulate


@pytest.fixture
def captured_figures(monkeypatch):
    """Record each figure's axes before save_figure closes it."""
    seen = []
    original = plots.save_figure

    def spy(fig, path, formats=None):
        seen.append([ax for ax in fig.axes])
        return original(fig, path, formats)

    monkeypatch.setattr(plots, "save_figure", spy)
    return seen


def test_advantage_figure_files_and_panels(tmp_path, captured_figures):
    written = plots.plot_advantages(tmp_path)
    assert sorted(p.name for p in written) == ["advantages.pdf", "advantages.png"]
    for p in written:
        assert p.stat().st_size > 10_000
    (axes,) = captured_figures
    assert len(axes) == 4
    assert all(len(ax.get_lines()) == 4 for ax in axes)  # one curve per beta


def test_advantage_curves_match_closed_form():
    curves = plots.advantage_curves((0.0, 4.0), group_size=50)
    for beta in (0.0, 4.0):
        for i, p in enumerate(curves["accuracy"]):
            c = round(p * 50)
            a_pos, a_neg = binary_closed_form(beta, 50, c)
            assert curves["binary"][beta]["pos"][i] == pytest.approx(a_pos, rel=1e-9)
            assert curves["binary"][beta]["neg"][i] == pytest.approx(a_neg, rel=1e-9, abs=1e-12)
            assert curves["binary"][beta]["mean_abs"][i] == pytest.approx(2 * p * a_pos, rel=1e-9)


def test_bandit_figure(tmp_path, captured_figures):
    res = simulate([0.0, 8.0], 2, BanditSpec(updates=200, record_every=20))
    (path,) = plots.plot_bandit(res, tmp_path / "bandit.png")
    assert path.stat().st_size > 10_000
    (axes,) = captured_figures
    assert len(axes) == 2
    assert [len(ax.get_lines()) for ax in axes] == [2 + 2, 2]  # reward panel also has the 1.0 / 0.6 guides
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), res.reward_ma[0].mean(axis=0))
