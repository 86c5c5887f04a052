"""DIEM as its authors define it, and the two E-DIEM variants (released vs the course's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from safealign_lib.methods.diem import (
    diem,
    diem_null,
    diem_reference_values,
    ediem_empirical,
    ediem_released,
    landmark_table,
    null_comparison,
    random_pair_geometry,
    robust_centre_spread,
)


def test_closed_form_null_matches_the_formulas_and_scales_with_the_range():
    unit = diem_null(4096, 0.0, 1.0, method="closed_form")
    assert unit.center == pytest.approx(math.sqrt(4096 / 6))
    assert unit.variance == pytest.approx(7 / 120)
    wide = diem_null(4096, -1.0, 1.0, method="closed_form")  # R = 2
    assert wide.center == pytest.approx(2 * unit.center)
    assert wide.variance == pytest.approx(4 * unit.variance)
    # the variance does not grow with n: the point of the metric
    assert diem_null(16, 0, 1, method="closed_form").variance == unit.variance


def test_monte_carlo_null_agrees_with_closed_form_within_sampling_error():
    n_pairs = 2000
    mc = diem_null(4096, 0.0, 1.0, n_pairs=n_pairs, seed=1)
    cf = diem_null(4096, 0.0, 1.0, method="closed_form")
    sd = math.sqrt(cf.variance)
    # 4 standard errors of a median and of a variance estimated from n_pairs samples
    assert abs(mc.center - cf.center) < 4 * 1.2533 * sd / math.sqrt(n_pairs)
    assert abs(mc.variance - cf.variance) < 4 * cf.variance * math.sqrt(2 / (n_pairs - 1))
    assert mc.orthogonal_distance == pytest.approx(cf.orthogonal_distance, rel=1e-3)


def test_monte_carlo_is_seeded():
    a = diem_null(64, 0, 1, n_pairs=500, seed=3)
    b = diem_null(64, 0, 1, n_pairs=500, seed=3)
    c = diem_null(64, 0, 1, n_pairs=500, seed=4)
    assert a == b
    assert a.center != c.center


def test_identical_vectors_give_the_minimum_and_opposite_corners_the_maximum():
    null = diem_null(50, -1.0, 1.0, method="closed_form")
    ref = diem_reference_values(null)
    x = torch.rand(50) * 2 - 1
    assert float(diem(x, x, -1, 1, null=null)) == pytest.approx(ref["min"])
    lo, hi = torch.full((50,), -1.0), torch.full((50,), 1.0)
    assert float(diem(lo, hi, -1, 1, null=null)) == pytest.approx(ref["max"])
    assert ref["min"] < 0 < ref["max"]


def test_orthogonal_reference_is_the_diem_of_a_vector_and_a_unit_vector_orthogonal_to_it():
    null = diem_null(32, 0.0, 1.0, n_pairs=4000, seed=0)
    ref = diem_reference_values(null)
    gen = torch.Generator().manual_seed(5)
    a = torch.rand(400, 32, generator=gen, dtype=torch.float64)
    g = torch.randn(400, 32, generator=gen, dtype=torch.float64)
    u = g - (g * a).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a  # Gram-Schmidt
    u = u / u.norm(dim=1, keepdim=True)
    med = float(diem(a, u, 0, 1, null=null).median())
    assert med == pytest.approx(
        ref["orthogonal_median"], abs=3 * ref["null_std"] / math.sqrt(400) * 1.26
    )


def test_diem_is_vectorised_over_batches():
    null = diem_null(8, 0, 1, method="closed_form")
    a, b = torch.rand(3, 4, 8), torch.rand(3, 4, 8)
    batch = diem(a, b, 0, 1, null=null)
    assert batch.shape == (3, 4)
    loop = torch.stack(
        [torch.stack([diem(a[i, j], b[i, j], 0, 1, null=null) for j in range(4)]) for i in range(3)]
    )
    torch.testing.assert_close(batch, loop)
    # numpy input, and one vector broadcast against many
    one = diem(np.asarray(a[0, 0]), b[0], 0, 1, null=null)
    torch.testing.assert_close(
        one, torch.stack([diem(a[0, 0], b[0, j], 0, 1, null=null) for j in range(4)])
    )


def test_diem_of_random_pairs_is_centred_in_every_dimension_while_distances_grow():
    gen = torch.Generator().manual_seed(0)
    medians, dists = [], []
    for n in (16, 1024):
        null = diem_null(n, 0, 1, n_pairs=4000, seed=2)
        a, b = torch.rand(2000, n, generator=gen), torch.rand(2000, n, generator=gen)
        medians.append(float(diem(a, b, 0, 1, null=null).median()))
        dists.append(float((a - b).norm(dim=1).median()))
        # median of fresh pairs is 0 within a few standard errors of DIEM's spread
        assert abs(medians[-1]) < 4 * diem_reference_values(null)["null_std"] * 1.26 / math.sqrt(
            2000
        )
    assert dists[1] > 7 * dists[0]


def test_random_pair_geometry_draws_dimension_after_dimension_from_one_generator():
    hd = random_pair_geometry([2, 512], n_pairs=200, seed=3)
    rng = np.random.default_rng(3)
    for n in (2, 512):  # the same draws, in the same order, as a loop over the dimensions
        a = rng.random((200, n), dtype=np.float32)
        b = rng.random((200, n), dtype=np.float32)
    assert hd.loc[512, "dist_mean"] == np.linalg.norm(a - b, axis=1).mean()
    assert list(hd.index) == [2, 512]
    assert hd.loc[512, "cos_mean"] == pytest.approx(0.75, abs=0.01)  # cosine concentrates
    assert abs(hd.loc[512, "cos_centred_mean"]) < 0.02
    assert hd.loc[512, "cos_sd"] < hd.loc[2, "cos_sd"] / 5
    assert hd.loc[512, "contrast"] < hd.loc[2, "contrast"]  # everything equally far


def test_null_comparison_and_landmark_table():
    nulls, table = null_comparison([4, 64], n_pairs=2000, seed=0)
    assert table.loc[64, "E[d] Monte Carlo"] == nulls[64].center
    assert table.loc[64, "E[d] = sqrt(n/6)"] == pytest.approx(math.sqrt(64 / 6))
    assert (table["Var(d) = 7/120"] == 7 / 120).all() and table.index.name == "n"
    marks = landmark_table(nulls, [4, 64])
    assert marks.loc[64, "min"] == diem_reference_values(nulls[64])["min"]
    assert list(marks.index) == [4, 64] and marks.index.name == "n"


def test_diem_rejects_bad_input():
    with pytest.raises(ValueError, match="v_min < v_max"):
        diem_null(4, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive integer"):
        diem_null(0)
    with pytest.raises(ValueError, match="closed_form"):
        diem_null(16_777_216, n_pairs=100_000)
    with pytest.raises(ValueError, match="Unknown DIEM null"):
        diem_null(4, method="exact")
    with pytest.raises(ValueError, match="one dimension"):
        diem(torch.rand(3), torch.rand(4), 0, 1, null="closed_form")
    with pytest.raises(ValueError, match="NaN"):
        diem(torch.tensor([0.0, float("nan")]), torch.rand(2), 0, 1, null="closed_form")
    with pytest.raises(ValueError, match="recompute"):
        diem(torch.rand(4), torch.rand(4), 0, 1, null=diem_null(5, 0, 1, method="closed_form"))


def _lora_like_pair(seed: int, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA-sized update Y = B A (entries ~1e-4) and a partly shrunk copy X."""
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(64, 4, generator=g) * 1e-2
    a = torch.randn(4, 48, generator=g) * 1e-2
    y = b @ a
    x = (b * torch.linspace(1.0 - spread, 1.0, 4)) @ a
    return x, y


def test_released_ediem_scores_about_one_whatever_the_distance():
    pairs = [_lora_like_pair(s, spread) for s, spread in enumerate((0.01, 0.3, 0.9, 1.5))]
    dists = [float((x - y).norm()) for x, y in pairs]
    scores = [ediem_released(x, y) for x, y in pairs]
    assert max(dists) > 50 * min(dists)  # very different pairs ...
    for s in scores:  # ... all score 1 plus rounding
        assert 0.9 < s < 1.1
    x, _ = pairs[0]
    assert math.isnan(ediem_released(x, x.clone()))  # the released code returns None here


def test_empirical_ediem_hand_computed_and_per_row_nulls():
    # null 1..5: median 3, IQR (linear interpolation) 4 - 2 = 2
    assert float(ediem_empirical(7.0, torch.arange(1.0, 6.0))) == pytest.approx(2.0)
    centre, spread = robust_centre_spread(torch.arange(1.0, 6.0))
    assert (float(centre), float(spread)) == (3.0, 2.0)
    nulls = torch.stack([torch.arange(1.0, 6.0), 10 * torch.arange(1.0, 6.0)])
    scores = ediem_empirical(torch.tensor([3.0, 50.0]), nulls)
    torch.testing.assert_close(scores, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_empirical_ediem_refuses_the_released_degenerate_null():
    d = torch.tensor(0.37)
    copies = d.repeat(50)  # the released "samples": the pair itself, 50 times
    with pytest.raises(ValueError, match="zero spread"):
        ediem_empirical(d, copies)
    with pytest.raises(ValueError, match="at least 2"):
        ediem_empirical(d, torch.tensor([1.0]))
