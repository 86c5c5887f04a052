import matplotlib
import pandas as pd

from safealign_lib.studies.figures import degradation

matplotlib.use("Agg")


def test_dose_response_and_loss_curves(capsys):
    runs = pd.DataFrame(
        {
            "condition": ["benign", "harmful10", "harmful100", "identity_shift"],
            "seed": [0, 0, 0, 0],
            "refusal_rate": [0.9, 0.5, 0.1, 0.3],
        }
    )
    fig = degradation.dose_response(runs, {"refusal_rate": 1.0}, metrics=["refusal_rate"])
    (ax,) = fig.axes
    # the dose series only: identity shifting has no harmful examples to put on the axis
    assert list(ax.lines[0].get_xdata()) == [0, 10, 100]
    assert list(ax.lines[0].get_ydata()) == [0.9, 0.5, 0.1]
    assert degradation.loss_curves({}) is None and "from the cache" in capsys.readouterr().out
    curves = {
        ("benign", 0): [2.0, 1.0, 0.5],
        ("benign", 1): [2.2, 1.2, 0.7],
        ("harmful10", 0): [3.0],
    }
    fig = degradation.loss_curves(curves, window=1)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 + 2  # every seed thin, one mean per condition
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["benign (2 seeds)", "harmful10 (1 seed)"]  # one entry per condition
    mean = [ln for ln in ax.lines if ln.get_label() == "benign (2 seeds)"][0]
    assert list(mean.get_ydata()) == [2.1, 1.1, 0.6]


def test_each_series_gets_its_own_chat_reference_where_they_differ():
    runs = pd.DataFrame(
        {
            "condition": ["benign", "harmful10", "benign_instruct", "mixed"],
            "seed": [0, 0, 0, 0],
            "refusal_rate": [0.9, 0.5, 0.8, 0.4],
            "utility": [0.5, 0.5, 0.8, 0.8],
        }
    )
    before = {
        "summary data": {"refusal_rate": 1.0, "utility": 0.06},
        "instruction data": {"refusal_rate": 1.0, "utility": 0.78},
    }
    fig = degradation.dose_response(runs, before, metrics=["refusal_rate", "utility"])
    refusal, utility = fig.axes
    dashed = [ln for ln in refusal.lines if ln.get_linestyle() == "--"]
    assert [ln.get_label() for ln in dashed] == ["chat before"]  # one reference: one line
    dashed = [ln for ln in utility.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_ydata()[0] for ln in dashed) == [0.06, 0.78]
    assert {ln.get_label() for ln in dashed} == {
        "chat before (summary data)",
        "chat before (instruction data)",
    }
