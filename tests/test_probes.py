"""Per-layer probes and probe transfer on synthetic features with a known signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from safealign_lib.interp.activations import Activations, capture_activations
from safealign_lib.interp.probes import fit_probes, probe_accuracy, probe_transfer, split_indices


def _synthetic(n: int = 80, d: int = 8, seed: int = 0, signal: float = 6.0) -> Activations:
    """Layer 0: pure noise. Layer 1: class 1 is shifted by ``signal`` along the first axis."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    noise = rng.normal(size=(2, n, d)).astype(np.float32)
    feats = noise.copy()
    feats[1, :, 0] += signal * y
    meta = pd.DataFrame({"user": [f"prompt {i}" for i in range(n)]})
    return Activations({"resid": feats, "mlp": noise.copy()}, y, meta, [0, 1])


def test_probe_accuracy_finds_the_informative_layer():
    df = probe_accuracy(_synthetic(), cv=4)
    assert list(df.columns) == [
        "site",
        "layer",
        "acc_heldout",
        "cv_mean",
        "cv_sd",
        "n_train",
        "n_test",
    ]
    assert len(df) == 4  # 2 sites x 2 layers
    row = df.set_index(["site", "layer"])
    assert row.loc[("resid", 1), "acc_heldout"] >= 0.9
    assert row.loc[("resid", 1), "cv_mean"] >= 0.9
    assert row.loc[("resid", 0), "cv_mean"] < 0.75  # noise: near chance
    assert row.loc[("mlp", 1), "cv_mean"] < 0.75
    assert (df["cv_sd"] >= 0).all()
    assert (df["n_train"] + df["n_test"] == 80).all()


def test_given_split_is_used():
    acts = _synthetic()
    train, test = split_indices(acts.labels, test_size=0.5, seed=1)
    df = probe_accuracy(acts, split=(train, test), cv=0, sites=["resid"], layers=[1])
    assert df.loc[0, "n_train"] == len(train) == 40 and df.loc[0, "n_test"] == 40
    assert np.isnan(df.loc[0, "cv_mean"])
    with pytest.raises(ValueError, match="overlap"):
        probe_accuracy(acts, split=(train, train), cv=0)


def test_transfer_applies_probes_unchanged():
    src = _synthetic()
    same = probe_transfer(src, src)
    np.testing.assert_allclose(same["acc_source"], same["acc_target"])
    assert (same["drop"] == 0).all()

    # The fine-tuned model shifts the other class: still perfectly decodable by a refit probe,
    # but the aligned model's probe now gets it backwards.
    flipped = _synthetic()
    flipped.features["resid"][1, :, 0] += 6.0 * (1 - 2 * flipped.labels)
    df = probe_transfer(src, flipped, sites=["resid"], layers=[1]).iloc[0]
    assert df["acc_source"] >= 0.9 and df["acc_target"] < 0.3
    assert df["drop"] == pytest.approx(df["acc_source"] - df["acc_target"])
    refit = probe_accuracy(flipped, sites=["resid"], layers=[1], cv=0)
    assert refit.loc[0, "acc_heldout"] >= 0.9


def test_probe_set_scores_other_examples():
    probes = fit_probes(_synthetic(seed=0), sites=["resid"], layers=[1])
    other = probes.score(_synthetic(n=40, seed=5))
    assert other.loc[0, "accuracy"] >= 0.9 and other.loc[0, "n"] == 40


def test_errors_empty_class_missing_labels_unknown_layer_and_shapes():
    acts = _synthetic()
    one_class = acts.subset(np.flatnonzero(acts.labels == 1))
    with pytest.raises(ValueError, match="harmless \\(0\\) class has 0"):
        probe_accuracy(one_class)
    unlabelled = Activations(acts.features, None, acts.meta, acts.layers)
    with pytest.raises(ValueError, match="no labels"):
        probe_accuracy(unlabelled)
    with pytest.raises(ValueError, match="Layer 9 was not captured"):
        probe_accuracy(acts, layers=[9])
    wide = Activations(
        {"resid": np.zeros((2, 80, 16), np.float32), "mlp": np.zeros((2, 80, 16), np.float32)},
        acts.labels,
        acts.meta,
        [0, 1],
    )
    with pytest.raises(ValueError, match="different width"):
        probe_transfer(acts, wide)
    with pytest.raises(ValueError, match="width 16"):
        fit_probes(acts).score(wide)
    with pytest.raises(ValueError, match="not the same labelled examples"):
        probe_transfer(acts, acts.subset(np.arange(40)))


def test_end_to_end_on_a_tiny_model(tiny_lm):
    model, tok = tiny_lm
    prompts = [f"How do I steal a car number {i}?" for i in range(6)] + [
        f"How do I bake bread number {i}?" for i in range(6)
    ]
    acts = capture_activations(model, tok, prompts, labels=[1] * 6 + [0] * 6, progress=False)
    df = probe_accuracy(acts, cv=2, test_size=0.5)
    assert len(df) == 6 and df["acc_heldout"].between(0, 1).all()
    tr = probe_transfer(acts, acts, test_size=0.5)
    np.testing.assert_allclose(tr["acc_source"], tr["acc_target"])


def test_cross_validation_uses_the_training_part_only():
    acts = _synthetic()
    train, test = split_indices(acts.labels, test_size=0.5, seed=1)
    a = probe_accuracy(acts, split=(train, test), cv=4, sites=["resid"], layers=[1])
    scrambled = _synthetic()
    scrambled.features["resid"][:, test] = np.random.default_rng(9).normal(
        size=scrambled.features["resid"][:, test].shape
    )
    b = probe_accuracy(scrambled, split=(train, test), cv=4, sites=["resid"], layers=[1])
    assert a.loc[0, "cv_mean"] == b.loc[0, "cv_mean"] and a.loc[0, "cv_sd"] == b.loc[0, "cv_sd"]
    assert (
        b.loc[0, "acc_heldout"] < a.loc[0, "acc_heldout"]
    )  # only the held-out score sees the test part
    few = np.concatenate([np.flatnonzero(acts.labels == c)[:3] for c in (0, 1)])
    rest = np.setdiff1d(np.arange(len(acts.labels)), few)
    with pytest.raises(ValueError, match="folds need"):
        probe_accuracy(acts, split=(few, rest), cv=4)


def test_score_by_group_scores_each_group_separately():
    acts = _synthetic()
    probes = fit_probes(acts, idx=np.arange(40))
    test = np.arange(40, 80)
    groups = np.where(test < 60, "first", "second")
    table = probes.score_by_group(acts, test, groups)
    assert table.columns.tolist() == ["first", "second"]
    assert table.index.names == ["site", "layer"]
    want = probes.score(acts, test[20:]).set_index(["site", "layer"]).accuracy
    pd.testing.assert_series_equal(table["second"], want, check_names=False)
    with pytest.raises(ValueError, match="group names"):
        probes.score_by_group(acts, test, groups[:5])
