import matplotlib
import pandas as pd

from safealign_lib.course.figures import degradation

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
    fig = degradation.loss_curves({("benign", 0): [2.0, 1.0, 0.5]})
    assert len(fig.axes[0].lines) == 1
