"""Per-layer linear probes: is "harmful" linearly decodable from a layer's features?

One probe per (site, layer): ``StandardScaler`` + ``LogisticRegression``. Reported as a tidy
DataFrame (one row per site and layer) with held-out accuracy on a split and cross-validated
accuracy with its spread over folds.

Probe **transfer** (SaLoRA §3.2): fit the probes on the aligned model's features and apply them
*unchanged* to a fine-tuned model's features of the same examples. A drop in accuracy means the
fine-tune moved the representation the aligned model used to tell harmful from harmless; a
probe refit on the fine-tuned features (:func:`probe_accuracy`) answers a different question:
whether harmfulness is still decodable at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from safealign_lib.interp.activations import Activations


def _small_fits() -> threadpool_limits:
    """One BLAS thread for the probes: fits on a few hundred examples gain nothing from threads,
    and on a busy 2-core machine multithreaded BLAS made them 10-20x slower (spin-waiting)."""
    return threadpool_limits(limits=1, user_api="blas")


def make_probe(C: float = 1.0, max_iter: int = 2000, seed: int = 0) -> Pipeline:
    """A fresh probe: standardise each feature, then L2-regularised logistic regression."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    )


def check_labels(acts: Activations, min_per_class: int = 1) -> np.ndarray:
    """The binary labels of ``acts``; an error if missing, not binary or a class is too small."""
    if acts.labels is None:
        raise ValueError(
            "These activations have no labels; pass labels=... to capture_activations "
            "(or give every example meta['harmful'])."
        )
    y = acts.labels
    bad = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad:
        raise ValueError(f"Probe labels must be 0/1 (1 = harmful); found {bad}.")
    for cls in (0, 1):
        k = int((y == cls).sum())
        if k < min_per_class:
            name = "harmful (1)" if cls else "harmless (0)"
            raise ValueError(
                f"The {name} class has {k} example(s); need at least {min_per_class}. "
                "Capture examples of both classes."
            )
    return y


def split_indices(
    labels: np.ndarray, test_size: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified (train_idx, test_idx) split of the examples, reproducible by ``seed``."""
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(test)


def _sites_layers(
    acts: Activations, sites: Sequence[str] | None, layers: Sequence[int] | None
) -> tuple[list[str], list[int]]:
    sites = acts.sites if sites is None else list(sites)
    layers = acts.layers if layers is None else list(layers)
    for s in sites:
        acts.site(s)  # raises for an unknown site
    for layer in layers:
        acts.layer_index(layer)  # raises for an unknown layer
    return sites, layers


def _resolve_split(
    y: np.ndarray, split: tuple | None, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if split is None:
        return split_indices(y, test_size, seed)
    train, test = (np.asarray(s) for s in split)
    if train.dtype == bool:
        train, test = np.flatnonzero(train), np.flatnonzero(test)
    if len(train) == 0 or len(test) == 0:
        raise ValueError("The split has an empty train or test part.")
    if np.intersect1d(train, test).size:
        raise ValueError("The train and test parts of the split overlap.")
    if len(np.unique(y[train])) < 2:
        raise ValueError(
            "The training part of the split holds a single class; use a stratified split "
            "(split_indices)."
        )
    return train, test


def probe_accuracy(
    acts: Activations,
    *,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    split: tuple | None = None,
    test_size: float = 0.25,
    cv: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit one probe per site and layer; held-out and cross-validated accuracy.

    ``split`` is ``(train_idx, test_idx)`` (index arrays or boolean masks); by default a
    stratified split with ``test_size`` and ``seed``. Columns: ``site, layer, acc_heldout,
    cv_mean, cv_sd`` (sd over ``cv`` stratified folds; ``cv=0`` skips cross-validation),
    ``n_train, n_test``. Cross-validation uses the training part only, so ``cv_mean`` can
    choose a layer without touching the examples ``acc_heldout`` is measured on.
    """
    y = check_labels(acts, min_per_class=2)
    sites, layers = _sites_layers(acts, sites, layers)
    train, test = _resolve_split(y, split, test_size, seed)
    if cv:
        small = min(int((y[train] == c).sum()) for c in (0, 1))
        if small < cv:
            raise ValueError(
                f"cv={cv} folds need at least {cv} training examples per class; the smaller "
                f"class has {small}. Use fewer folds (or cv=0)."
            )
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed) if cv else None
    with _small_fits():
        rows = _probe_rows(acts, y, sites, layers, train, test, folds, C, seed)
    return pd.DataFrame(rows)


def _probe_rows(
    acts: Activations,
    y: np.ndarray,
    sites: list[str],
    layers: list[int],
    train: np.ndarray,
    test: np.ndarray,
    folds: StratifiedKFold | None,
    C: float,
    seed: int,
) -> list[dict]:
    rows = []
    for s in sites:
        for layer in layers:
            X = acts.get(s, layer)
            probe = make_probe(C, seed=seed).fit(X[train], y[train])
            row = {"site": s, "layer": layer, "acc_heldout": float(probe.score(X[test], y[test]))}
            if folds is not None:
                scores = cross_val_score(make_probe(C, seed=seed), X[train], y[train], cv=folds)
                row.update(cv_mean=float(scores.mean()), cv_sd=float(scores.std(ddof=1)))
            else:
                row.update(cv_mean=np.nan, cv_sd=np.nan)
            rows.append({**row, "n_train": len(train), "n_test": len(test)})
    return rows


@dataclass
class ProbeSet:
    """Fitted probes keyed by ``(site, layer)``; apply them unchanged to any features of the
    same sites, layers and width with :meth:`score`."""

    probes: dict[tuple[str, int], Pipeline]
    dims: dict[str, int]

    def score(
        self, acts: Activations, idx: Sequence[int] | np.ndarray | None = None
    ) -> pd.DataFrame:
        """Accuracy of every probe on ``acts`` (optionally only the examples ``idx``):
        columns ``site, layer, accuracy, n``."""
        y = check_labels(acts)
        idx = np.arange(len(y)) if idx is None else np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        rows = []
        for (s, layer), probe in self.probes.items():
            X = acts.get(s, layer)
            if X.shape[1] != self.dims[s]:
                raise ValueError(
                    f"Site {s!r} features have width {X.shape[1]}, but the probes were fit "
                    f"on width {self.dims[s]}: apply probes to the same model family."
                )
            with _small_fits():
                acc = float(probe.score(X[idx], y[idx]))
            rows.append({"site": s, "layer": layer, "accuracy": acc, "n": len(idx)})
        return pd.DataFrame(rows)

    def score_by_group(
        self, acts: Activations, idx: Sequence[int] | np.ndarray, groups: Sequence[str]
    ) -> pd.DataFrame:
        """Accuracy of every probe on each group of the examples ``idx`` separately
        (``groups[i]`` names the group of ``idx[i]``, e.g. the kind of prompt): index
        ``(site, layer)``, one column per group in order of first appearance."""
        idx, groups = np.asarray(idx), np.asarray(groups)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if len(groups) != len(idx):
            raise ValueError(f"{len(groups)} group names for {len(idx)} examples; give one each.")
        return pd.DataFrame(
            {
                g: self.score(acts, idx[groups == g]).set_index(["site", "layer"]).accuracy
                for g in pd.unique(groups)
            }
        )


def fit_probes(
    acts: Activations,
    *,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    idx: Sequence[int] | np.ndarray | None = None,
    C: float = 1.0,
    seed: int = 0,
) -> ProbeSet:
    """Fit one probe per site and layer on ``acts`` (optionally only the examples ``idx``)."""
    y = check_labels(acts)
    sites, layers = _sites_layers(acts, sites, layers)
    idx = np.arange(len(y)) if idx is None else np.asarray(idx)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if len(np.unique(y[idx])) < 2:
        raise ValueError("The probe training examples hold a single class; include both classes.")
    with _small_fits():
        probes = {
            (s, layer): make_probe(C, seed=seed).fit(acts.get(s, layer)[idx], y[idx])
            for s in sites
            for layer in layers
        }
    return ProbeSet(probes, {s: acts.site(s).shape[2] for s in sites})


def _check_same_examples(source: Activations, target: Activations) -> None:
    if len(source) != len(target) or not np.array_equal(source.labels, target.labels):
        raise ValueError(
            f"Source ({len(source)} examples) and target ({len(target)}) are not the same "
            "labelled examples; capture both models on the same list, or use "
            "fit_probes(source).score(target) for a different target set."
        )
    if (
        "user" in source.meta
        and "user" in target.meta
        and not source.meta["user"].equals(target.meta["user"])
    ):
        raise ValueError(
            "Source and target were captured on different prompts (meta['user'] differs); "
            "capture both models on the same list of examples."
        )
    if source.position != target.position:
        raise ValueError(
            f"Source position {source.position!r} differs from target position "
            f"{target.position!r}; capture both at the same position."
        )


def probe_transfer(
    source: Activations,
    target: Activations,
    *,
    sites: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    split: tuple | None = None,
    test_size: float = 0.25,
    C: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """SaLoRA's protocol: fit probes on ``source`` (aligned model), apply them unchanged to
    ``target`` (fine-tuned model, same examples). Both are scored on the held-out examples.

    Columns: ``site, layer, acc_source, acc_target, drop`` (= source − target), ``n_test``.
    """
    y = check_labels(source, min_per_class=2)
    check_labels(target)
    _check_same_examples(source, target)
    sites, layers = _sites_layers(source, sites, layers)
    for s in sites:
        if s not in target.features or target.site(s).shape[2] != source.site(s).shape[2]:
            raise ValueError(
                f"Target features for site {s!r} are missing or have a different width "
                "than the source; capture both models with the same sites."
            )
    missing = [layer for layer in layers if layer not in target.layers]
    if missing:
        raise ValueError(f"Target has no features for layers {missing}; capture the same layers.")
    train, test = _resolve_split(y, split, test_size, seed)
    probes = fit_probes(source, sites=sites, layers=layers, idx=train, C=C, seed=seed)
    a = probes.score(source, test).rename(columns={"accuracy": "acc_source"})
    b = probes.score(target, test).rename(columns={"accuracy": "acc_target"})
    out = a.drop(columns="n").merge(b, on=["site", "layer"]).rename(columns={"n": "n_test"})
    out["drop"] = out["acc_source"] - out["acc_target"]
    return out[["site", "layer", "acc_source", "acc_target", "drop", "n_test"]]
