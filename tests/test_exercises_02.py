"""Notebook 02's exercise check passes on the reference and fails on wrong answers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from safealign_lib.course.exercises import check_diff_in_means
from safealign_lib.interp.activations import Activations
from safealign_lib.interp.refusal_direction import refusal_directions


def reference(feats, labels):
    acts = Activations(
        {"resid": feats}, labels, pd.DataFrame({"i": range(len(labels))}), list(range(len(feats)))
    )
    return refusal_directions(acts).vectors


def test_passes_on_the_reference_and_a_plain_numpy_answer(capsys):
    assert check_diff_in_means(reference)
    assert check_diff_in_means(lambda X, y: X[:, y == 1].mean(1) - X[:, y == 0].mean(1))
    assert capsys.readouterr().out.startswith("PASS")


def test_fails_on_wrong_answers_with_a_hint(capsys):
    wrong = {
        "the sign": lambda X, y: X[:, y == 0].mean(1) - X[:, y == 1].mean(1),
        "not r / ||r||": lambda X, y: (lambda r: r / np.linalg.norm(r, axis=-1, keepdims=True))(
            X[:, y == 1].mean(1) - X[:, y == 0].mean(1)
        ),
        "mean of all examples": lambda X, y: X[:, y == 1].mean(1) - X.mean(1),
        "axis 1": lambda X, y: X[:, y == 1].mean((0, 1)) - X[:, y == 0].mean((0, 1)),
        "raised": lambda X, y: X.nope,
    }
    for hint, fn in wrong.items():
        assert not check_diff_in_means(fn)
        out = capsys.readouterr().out
        assert out.startswith("FAIL") and hint in out, (hint, out)
    # a wrong answer without a known pattern still fails
    assert not check_diff_in_means(lambda X, y: X[:, y == 1].mean(1))
    assert capsys.readouterr().out.startswith("FAIL")
