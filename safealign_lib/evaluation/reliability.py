"""Reliability metrics: per-answer uncertainty, AUARC, risk-coverage and calibration.

- Uncertainty of an answer = the mean entropy (nats) of the model's next-token distribution
  over the answer's tokens, from ``generate(..., output_logits=True,
  return_dict_in_generate=True)`` (``.logits``, raw) or ``output_scores=True`` (``.scores``,
  after logits processors).
- Accuracy-rejection curve: keep the k answers the model is most certain of (lowest
  uncertainty), average their utility, for k = N, ..., 1. AUARC is the mean of that curve:
  the area under it with rejection rate on the x axis. Sort by *increasing uncertainty* (the
  released SPLoRA code reverses the list order instead, which scores the least certain first).
  Tied uncertainties get the average utility of their tie group, i.e. the expectation over
  random tie-breaking, so the result does not depend on input order.
- Risk-coverage: drop the x% most uncertain answers and average the utility of the rest.
- Expected calibration error of a probability (e.g. the first-token refusal probability)
  against binary labels (e.g. the judge's refusal verdicts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def token_entropies(logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per position: (batch, steps, vocab) -> (batch, steps).

    Also takes generate's tuple of per-step (batch, vocab) tensors. ``-inf`` logits (masked by
    a top-k/top-p processor) count as probability 0.
    """
    if isinstance(logits, (tuple, list)):
        if not logits:
            raise ValueError(
                "No generation steps: pass output.logits (or output.scores) of generate."
            )
        logits = torch.stack(list(logits), dim=1)
    if logits.ndim != 3:
        raise ValueError(
            f"Expected logits of shape (batch, steps, vocab), got {tuple(logits.shape)}."
        )
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)


def answer_mask(
    generated_ids: torch.Tensor, eos_token_id: int | Sequence[int] | None
) -> torch.Tensor:
    """True for the tokens of each answer: up to and including its first EOS."""
    if generated_ids.ndim != 2:
        raise ValueError(
            f"generated_ids must be (batch, steps) new tokens, got {tuple(generated_ids.shape)}."
        )
    if eos_token_id is None:
        return torch.ones_like(generated_ids, dtype=torch.bool)
    eos = torch.as_tensor(eos_token_id).reshape(-1)
    is_eos = torch.isin(generated_ids, eos).long()
    # positions strictly after the first EOS have a positive count of earlier EOS tokens
    return (torch.cumsum(is_eos, dim=1) - is_eos) == 0


def mean_token_entropy(
    logits: torch.Tensor | Sequence[torch.Tensor],
    generated_ids: torch.Tensor | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Per-answer uncertainty: the mean token entropy over each answer's tokens, shape (batch,).

    ``generated_ids`` are the new tokens (``sequences[:, prompt_length:]``); with
    ``eos_token_id`` the padding after each answer's first EOS is left out.
    """
    h = token_entropies(logits)
    if generated_ids is None:
        return h.mean(dim=1)
    if generated_ids.shape != h.shape:
        raise ValueError(
            f"generated_ids {tuple(generated_ids.shape)} must match the logits' (batch, steps) "
            f"{tuple(h.shape)}; pass sequences[:, prompt_length:]."
        )
    mask = answer_mask(generated_ids, eos_token_id).to(h.dtype)
    return (h * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)


def _as_pair(uncertainty, utility) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(uncertainty, dtype=float).reshape(-1)
    y = np.asarray(utility, dtype=float).reshape(-1)
    if u.size == 0 or u.size != y.size:
        raise ValueError(
            f"Need one uncertainty per answer: got {u.size} uncertainties and {y.size} utilities."
        )
    if not (np.isfinite(u).all() and np.isfinite(y).all()):
        raise ValueError("Uncertainties and utilities must be finite (no NaN).")
    return u, y


def accuracy_rejection_curve(uncertainty, utility) -> np.ndarray:
    """Mean utility of the k most certain answers, for k = 1..N (ties: group averages)."""
    u, y = _as_pair(uncertainty, utility)
    order = np.argsort(u, kind="stable")  # increasing uncertainty: most certain first
    u, y = u[order], y[order]
    # replace each utility by its tie group's mean: the expectation over random tie-breaking
    _, start, counts = np.unique(u, return_index=True, return_counts=True)
    y = np.repeat(np.add.reduceat(y, start) / counts, counts)
    return np.cumsum(y) / np.arange(1, y.size + 1)


def auarc(uncertainty, utility) -> float:
    """Area under the accuracy-rejection curve (the mean of :func:`accuracy_rejection_curve`).

    Utility may be 0/1 (accuracy) or graded (ROUGE). Higher is better: certain answers are good.
    """
    return float(accuracy_rejection_curve(uncertainty, utility).mean())


def risk_coverage(
    uncertainty, utility, drop_fractions: Sequence[float] = tuple(np.round(np.arange(0, 1, 0.1), 2))
) -> pd.DataFrame:
    """Mean utility after dropping the x% most uncertain answers, for each x in ``drop_fractions``.

    ``floor(x * N)`` answers are dropped; columns: dropped_fraction, n_kept, coverage, mean_utility.
    """
    curve = accuracy_rejection_curve(uncertainty, utility)
    n = curve.size
    rows = []
    for x in drop_fractions:
        if not 0 <= x < 1:
            raise ValueError(f"Drop fractions must be in [0, 1), got {x}.")
        n_keep = n - int(np.floor(round(x * n, 9)))  # round: 0.7 * 10 must drop 7, not 6
        rows.append(
            {
                "dropped_fraction": float(x),
                "n_kept": n_keep,
                "coverage": n_keep / n,
                "mean_utility": float(curve[n_keep - 1]),
            }
        )
    return pd.DataFrame(rows)


def calibration_table(prob, labels, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins on [0, 1]: count, mean probability and positive rate per bin."""
    p = np.asarray(prob, dtype=float).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if p.size == 0 or p.size != y.size:
        raise ValueError(
            f"Need one label per probability: got {p.size} probabilities and {y.size} labels."
        )
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("Probabilities must lie in [0, 1]; pass probabilities, not logits.")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("Labels must be binary (0/1 or bool), e.g. the judge's refusal verdicts.")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}.")
    y = y.astype(float)
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)  # p = 1 goes to the last bin
    rows = []
    for b in range(n_bins):
        sel = idx == b
        rows.append(
            {
                "bin_lower": b / n_bins,
                "bin_upper": (b + 1) / n_bins,
                "count": int(sel.sum()),
                "mean_prob": float(p[sel].mean()) if sel.any() else float("nan"),
                "positive_rate": float(y[sel].mean()) if sel.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(prob, labels, n_bins: int = 10) -> float:
    """ECE = sum over bins of (n_b / N) * |positive rate_b - mean probability_b|."""
    t = calibration_table(prob, labels, n_bins)
    t = t[t["count"] > 0]
    return float(
        (t["count"] / t["count"].sum() * (t["positive_rate"] - t["mean_prob"]).abs()).sum()
    )
