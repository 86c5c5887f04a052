"""Conditional activation steering (Lee et al., ICLR 2025, "Programming refusal with conditional
activation steering"): add the refusal direction only to the requests a condition flags.

Adding notebook 02's refusal direction to every prompt makes the model refuse benign requests
too. Here a *condition* decides per prompt, from the prompt's own activations, whether the
*behaviour* (the direction, at one layer and scale) is added while it answers:

    gate = ProbeGate.fit(chat, tok, harmful_train, benign_train, layer=L)
    gate = gate.with_threshold(choose_threshold(gate.scores(chat, tok, val), val_labels))
    answers = steered_generate(chat, tok, prompts, gate.flags(chat, tok, prompts), r, L, alpha)

The condition is a logistic-regression probe on the last prompt token's residual stream after
block ``layer`` (the paper's condition vector is a direction read by cosine similarity; a
one-feature probe on that direction is the same test with a fitted threshold). The answers of
flagged and unflagged prompts are generated in two batches, with and without the addition, so
the gate never leaks from one prompt to another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib.interp.activations import capture_activations
from safealign_lib.interp.refusal_direction import add_direction
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.generation import generate


def last_token_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    layer: int,
) -> np.ndarray:
    """The residual stream after block ``layer`` at each prompt's last token, ``(n, d)``: where
    :func:`~safealign_lib.interp.refusal_direction.add_direction` adds the behaviour."""
    acts = capture_activations(
        model,
        tokenizer,
        prompts,
        label_key=None,
        sites=("resid",),
        layers=[layer],
        position="last",
        progress=False,
    )
    return acts.features["resid"][0]


@dataclass(frozen=True)
class ProbeGate:
    """A probe on the last prompt token after block ``layer`` and the threshold on its
    probability above which a prompt is flagged."""

    layer: int
    weights: np.ndarray
    bias: float
    threshold: float = 0.5

    @classmethod
    def fit(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        flagged: Sequence[ChatExample],
        unflagged: Sequence[ChatExample],
        layer: int,
        C: float = 1.0,
    ) -> ProbeGate:
        """Fit the probe on prompts that should be flagged (harmful) and prompts that should not."""
        from sklearn.linear_model import LogisticRegression

        if not flagged or not unflagged:
            raise ValueError("A gate needs prompts of both kinds to fit its probe.")
        x = last_token_states(model, tokenizer, [*flagged, *unflagged], layer)
        y = np.r_[np.ones(len(flagged)), np.zeros(len(unflagged))]
        probe = LogisticRegression(C=C, max_iter=2000).fit(x, y)
        return cls(layer, probe.coef_[0].astype(np.float64), float(probe.intercept_[0]))

    def with_threshold(self, threshold: float) -> ProbeGate:
        """The same gate with another threshold (chosen on validation prompts)."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"A probability threshold lies in [0, 1], got {threshold}.")
        return replace(self, threshold=float(threshold))

    def scores(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence
    ) -> np.ndarray:
        """The probe's probability that each prompt should be flagged."""
        x = last_token_states(model, tokenizer, prompts, self.layer)
        return 1 / (1 + np.exp(-(x @ self.weights + self.bias)))

    def flags(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence
    ) -> np.ndarray:
        """Whether each prompt is flagged (probability above the threshold)."""
        return self.scores(model, tokenizer, prompts) > self.threshold


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, max_false_flags: float = 0.02
) -> float:
    """The lowest threshold that flags at most ``max_false_flags`` of the prompts labelled 0
    (benign): as many harmful prompts flagged as the benign ones allow."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        raise ValueError("Choosing a threshold needs validation prompts of both kinds.")
    benign = np.sort(scores[~labels])
    allowed = int(np.floor(max_false_flags * len(benign)))  # benign prompts that may pass
    return float(benign[len(benign) - allowed - 1]) if allowed < len(benign) else 0.0


def steered_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    flags: Sequence[bool],
    direction: np.ndarray | torch.Tensor,
    layer: int,
    alpha: float,
    max_new_tokens: int = 32,
    batch_size: int = 128,
) -> list[str]:
    """Greedy answers, with ``alpha · direction`` added after block ``layer`` (every position)
    for the flagged prompts only; answers come back in the prompts' order."""
    if len(flags) != len(prompts):
        raise ValueError(f"{len(flags)} flags for {len(prompts)} prompts; give one each.")
    flags = [bool(f) for f in flags]
    out: list[str | None] = [None] * len(prompts)
    for value in (True, False):
        idx = [i for i, f in enumerate(flags) if f is value]
        if not idx:
            continue
        sub = [prompts[i] for i in idx]
        if value:
            with add_direction(model, direction, layer, alpha):
                texts = generate(model, tokenizer, sub, max_new_tokens, batch_size, progress=False)
        else:
            texts = generate(model, tokenizer, sub, max_new_tokens, batch_size, progress=False)
        for i, t in zip(idx, texts.texts, strict=True):
            out[i] = t
    return [t for t in out if t is not None]
