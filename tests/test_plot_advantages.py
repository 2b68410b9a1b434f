"""The advantage figure (arXiv 2509.24261, Fig. 2) renders with the expected panels; its curves come
from the estimators."""

import matplotlib

matplotlib.use("Agg")

import pytest
from test_estimators import binary_closed_form

from rsgrpo.analysis import plot_advantages


@pytest.fixture
def captured_figures(monkeypatch):
    """Record each figure's axes before save_figure closes it."""
    seen = []
    original = plot_advantages.save_figure

    def spy(fig, path, formats=None):
        seen.append([ax for ax in fig.axes])
        return original(fig, path, formats)

    monkeypatch.setattr(plot_advantages, "save_figure", spy)
    return seen


def test_advantage_figure_files_and_panels(tmp_path, captured_figures):
    written = plot_advantages.plot_advantages(tmp_path)
    assert sorted(p.name for p in written) == ["advantages.pdf", "advantages.png"]
    for p in written:
        assert p.stat().st_size > 10_000
    (axes,) = captured_figures
    assert len(axes) == 4
    assert all(len(ax.get_lines()) == 4 for ax in axes)  # one curve per beta


def test_advantage_curves_match_closed_form():
    curves = plot_advantages.advantage_curves((0.0, 4.0), group_size=50)
    for beta in (0.0, 4.0):
        for i, p in enumerate(curves["accuracy"]):
            c = round(p * 50)
            a_pos, a_neg = binary_closed_form(beta, 50, c)
            assert curves["binary"][beta]["pos"][i] == pytest.approx(a_pos, rel=1e-9)
            assert curves["binary"][beta]["neg"][i] == pytest.approx(a_neg, rel=1e-9, abs=1e-12)
            assert curves["binary"][beta]["mean_abs"][i] == pytest.approx(2 * p * a_pos, rel=1e-9)
