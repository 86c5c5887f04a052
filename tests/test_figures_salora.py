"""Notebook 03's result bars: the chat model's reference per condition where it differs."""

import matplotlib
import pandas as pd
import pytest

from safealign_lib.studies.figures import salora as figures

matplotlib.use("Agg")


@pytest.fixture
def bars(monkeypatch):
    drawn = []
    monkeypatch.setattr(figures.plt, "show", lambda: drawn.append(figures.plt.gcf()))
    return drawn


def test_each_condition_gets_the_chat_model_s_own_reference(bars):
    rows = [
        {"method": m, "condition": c, "seed": 0, **{k: 0.5 for k in figures.METRICS}}
        for m in figures.METHOD_COLORS
        for c in ("harmful10", "benign_instruct")
    ]
    runs = pd.DataFrame(rows)
    mean = runs.groupby(["condition", "method"])[list(figures.METRICS)].mean()
    ref = {
        "harmful10": {k: 0.06 for k in figures.METRICS},
        "benign_instruct": {k: 0.78 for k in figures.METRICS},
    }
    figures.results_bars(runs, mean, ref)
    ax = bars[-1].axes[0]
    segments = [c for c in ax.collections if c.get_linestyle()[0][1] is not None]
    ys = sorted(seg[0][1] for c in segments for seg in c.get_segments())
    assert ys == [0.06, 0.78]
