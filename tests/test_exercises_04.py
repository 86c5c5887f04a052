"""The checks of notebook 04's exercise (DIEM): pass on the reference, fail on typical mistakes."""

import numpy as np
import torch

from safealign_lib.course import exercises
from safealign_lib.methods import diem


def _reference_diem(a, b, v_min, v_max, null):
    return diem.diem(a, b, v_min, v_max, null=null)


def _written_out_diem(a, b, v_min, v_max, null):
    return (v_max - v_min) * (torch.linalg.vector_norm(a - b, dim=-1) - null.center) / null.variance


def test_diem_check_passes_the_library_and_a_written_out_formula():
    assert exercises.check_diem(_reference_diem)
    assert exercises.check_diem(_written_out_diem)


def test_diem_check_fails_typical_mistakes(capsys):
    d = lambda a, b: torch.linalg.vector_norm(a - b, dim=-1)  # noqa: E731
    assert not exercises.check_diem(
        lambda a, b, lo, hi, nl: (d(a, b) - nl.center) / nl.variance
    )  # no range
    assert "range" in capsys.readouterr().out
    assert not exercises.check_diem(
        lambda a, b, lo, hi, nl: (hi - lo) * (d(a, b) - nl.center) / nl.variance**0.5
    )
    assert "standard deviation" in capsys.readouterr().out
    assert not exercises.check_diem(
        lambda a, b, lo, hi, nl: (hi - lo) * d(a, b) / nl.variance
    )  # not centred
    assert not exercises.check_diem(
        lambda a, b, lo, hi, nl: (
            (hi - lo) * (torch.linalg.vector_norm(a - b) - nl.center) / nl.variance
        )
    )  # whole batch
    assert not exercises.check_diem(lambda a, b, lo, hi, nl: 1 / 0)


def _mc_null(n, v_min, v_max, n_pairs, seed, centre=np.median, spread=np.var, scale=True):
    rng = np.random.default_rng(seed)
    a, b = rng.random((n_pairs, n)), rng.random((n_pairs, n))
    if scale:
        a, b = a * (v_max - v_min) + v_min, b * (v_max - v_min) + v_min
    dist = np.linalg.norm(a - b, axis=1)
    return centre(dist), spread(dist)


def test_diem_null_check_passes_the_library_and_an_independent_monte_carlo():
    assert exercises.check_diem_null(
        lambda n, lo, hi, m, s: (
            diem.diem_null(n, lo, hi, n_pairs=m, seed=s).center,
            diem.diem_null(n, lo, hi, n_pairs=m, seed=s).variance,
        )
    )
    assert exercises.check_diem_null(_mc_null)
    assert exercises.check_diem_null(
        lambda *a: _mc_null(*a, centre=np.mean)
    )  # mean or median both pass


def test_diem_null_check_fails_typical_mistakes(capsys):
    assert not exercises.check_diem_null(lambda *a: _mc_null(*a, spread=np.std))
    assert "standard deviation" in capsys.readouterr().out
    assert not exercises.check_diem_null(lambda *a: _mc_null(*a, scale=False))  # always U[0, 1]
    assert not exercises.check_diem_null(
        lambda n, lo, hi, m, s: (np.sqrt(n / 6), 7 / 120)
    )  # range ignored
    # the asymptotic closed form is off at n = 4 (0.82 vs 0.78): the exercise asks for the
    # Monte Carlo
    closed = lambda n, lo, hi, m, s: (  # noqa: E731
        diem.diem_null(n, lo, hi, method="closed_form").center,
        diem.diem_null(n, lo, hi, method="closed_form").variance,
    )
    assert not exercises.check_diem_null(closed)
    assert not exercises.check_diem_null(lambda *a: (float("nan"), 1.0))


# --- notebook 05 (kept here: one file for the DIEM/SPLoRA notebooks' checks) ---


def _auarc_by_hand(u, y, descending=False):
    order = np.argsort(-u if descending else u)
    return float(np.mean(np.cumsum(y[order]) / np.arange(1, len(y) + 1)))


def test_auarc_check():
    from safealign_lib.evaluation import reliability

    assert exercises.check_auarc(reliability.auarc)
    assert exercises.check_auarc(_auarc_by_hand)
    assert not exercises.check_auarc(
        lambda u, y: _auarc_by_hand(u, y, descending=True)
    )  # released order
    assert not exercises.check_auarc(lambda u, y: float(np.mean(y)))  # no rejection at all
    assert not exercises.check_auarc(lambda u, y: 1 / 0)
