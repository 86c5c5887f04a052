"""Reliability metrics: token entropy, AUARC, risk-coverage, calibration error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safealign_lib.evaluation.reliability import (
    accuracy_rejection_curve,
    answer_mask,
    auarc,
    calibration_table,
    expected_calibration_error,
    mean_token_entropy,
    risk_coverage,
    token_entropies,
)


def test_token_entropy_of_uniform_and_certain_distributions():
    logits = torch.zeros(2, 3, 8)
    logits[1, :, 1:] = float("-inf")  # top-k masked: only token 0 left
    h = token_entropies(logits)
    torch.testing.assert_close(h[0], torch.full((3,), math.log(8)))
    torch.testing.assert_close(h[1], torch.zeros(3))
    # generate's tuple of per-step (batch, vocab) tensors gives the same result
    torch.testing.assert_close(token_entropies(tuple(logits.unbind(1))), h)


def test_mean_entropy_stops_after_the_first_eos():
    eos = 9
    ids = torch.tensor([[5, 9, 0, 0], [5, 6, 7, 8]])
    assert answer_mask(ids, eos).tolist() == [[True, True, False, False], [True] * 4]
    logits = torch.zeros(2, 4, 4)
    logits[:, 2:, 1:] = float("-inf")  # steps 2, 3 are certain (entropy 0)
    u = mean_token_entropy(logits, ids, eos_token_id=eos)
    # answer 0: steps 0-1 only, both uniform; answer 1: two uniform steps and two certain ones
    torch.testing.assert_close(u, torch.tensor([math.log(4), math.log(4) / 2]))
    torch.testing.assert_close(mean_token_entropy(logits), torch.full((2,), math.log(4) / 2))
    with pytest.raises(ValueError, match="prompt_length"):
        mean_token_entropy(logits, ids[:, :3], eos_token_id=eos)


def test_mean_entropy_from_a_real_generate_call(tiny_lm):
    model, tok = tiny_lm
    enc = tok(
        ["How do I bake bread?", "Tell me how to grow tomatoes."], return_tensors="pt", padding=True
    )
    out = model.generate(
        **enc,
        max_new_tokens=5,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    new = out.sequences[:, enc["input_ids"].shape[1] :]
    u = mean_token_entropy(out.logits, new, eos_token_id=tok.eos_token_id)
    assert u.shape == (2,)
    assert ((u >= 0) & (u <= math.log(len(tok)) + 1e-4)).all()


def test_auarc_on_a_hand_computed_case():
    uncertainty = [0.1, 0.5, 0.3, 0.9]
    utility = [1, 0, 1, 0]
    # most certain first: 0.1 (1), 0.3 (1), 0.5 (0), 0.9 (0) -> running means 1, 1, 2/3, 1/2
    np.testing.assert_allclose(accuracy_rejection_curve(uncertainty, utility), [1, 1, 2 / 3, 1 / 2])
    assert auarc(uncertainty, utility) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    # the released bug, least certain first, gives 0, 0, 1/3, 1/2: a different number
    assert auarc(uncertainty, utility) != pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    # a useless ranking (constant uncertainty) scores the plain mean utility
    assert auarc([0.2] * 4, utility) == pytest.approx(0.5)


def test_auarc_does_not_depend_on_input_order_with_ties():
    u = [0.2, 0.2, 0.7, 0.1]
    y = [1.0, 0.0, 0.3, 0.5]
    ref = auarc(u, y)
    for perm in ([1, 0, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        assert auarc(np.take(u, perm), np.take(y, perm)) == pytest.approx(ref)
    # by hand: 0.1 (0.5); the tie at 0.2 averages to 0.5 each; 0.7 (0.3)
    assert ref == pytest.approx((0.5 + 0.5 + 0.5 + (1.5 + 0.3) / 4) / 4)


def test_risk_coverage_drops_the_most_uncertain_answers():
    u = np.arange(10) / 10  # answer i has uncertainty i/10
    y = np.array([1, 1, 1, 0, 1, 0, 0, 1, 0, 0], dtype=float)
    t = risk_coverage(u, y, drop_fractions=[0.0, 0.4, 0.7, 0.9])
    assert t["n_kept"].tolist() == [10, 6, 3, 1]
    np.testing.assert_allclose(t["mean_utility"], [5 / 10, 4 / 6, 1.0, 1.0])
    np.testing.assert_allclose(t["coverage"], [1.0, 0.6, 0.3, 0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        risk_coverage(u, y, drop_fractions=[1.0])
    with pytest.raises(ValueError, match="one uncertainty per answer"):
        risk_coverage(u, y[:5])


def test_expected_calibration_error_hand_computed():
    prob = [0.1, 0.1, 0.9, 0.9]
    labels = [0, 1, 1, 1]
    # bin [0.1, 0.2): p 0.1 vs rate 0.5; bin [0.9, 1.0]: p 0.9 vs rate 1.0; each holds half
    assert expected_calibration_error(prob, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    table = calibration_table(prob, labels)
    assert table["count"].sum() == 4 and table.loc[9, "positive_rate"] == 1.0
    # p = 1.0 lands in the last bin; perfectly calibrated bins give 0
    assert expected_calibration_error([1.0, 1.0, 0.0, 0.0], [True, True, False, False]) == 0.0
    with pytest.raises(ValueError, match="binary"):
        expected_calibration_error([0.2, 0.4], [0, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2, 0.4], [0, 1])
    with pytest.raises(ValueError, match="one label per probability"):
        expected_calibration_error([0.2, 0.4], [0])
