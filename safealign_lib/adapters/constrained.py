"""The token-wise constrained fine-tuning objective of Qi et al. (ICLR 2025, "Safety alignment
should be made more than just a few tokens deep"), beside :func:`~.finetune.answer_loss`.

For an answer token y_t with Δ_t = log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) (π_ref:
the aligned model before the fine-tune), the objective is

    L = mean_t [ −(2 / β_t) · log σ(β_t · Δ_t) ]

whose gradient is the plain cross-entropy gradient of token t weighted by
w_t = 2 · (1 − σ(β_t · Δ_t)): a token the fine-tune already makes more likely than the aligned
model did (Δ_t > 0) is pushed less, and a large β_t makes that brake sharp. As β_t → 0, w_t → 1
and the objective becomes plain cross-entropy. The released trainer (``soft_sft_loss``)
computes exactly that gradient as ``−(w_t.detach() · log π_θ(y_t))`` with w_t clamped at 1e-3,
averaged over every answer token of the batch; :func:`constrained_loss` does the same.

The β schedule is strong on the first answer tokens and weak later (:class:`Constraint`,
the released defaults): β_t = β · first_token_factor at the first token, β · bias_factor on the
next ``bias_length − 1`` tokens, β afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from safealign_lib.adapters.finetune import target_mask


@dataclass(frozen=True)
class Constraint:
    """The β schedule of the constrained objective (the released trainer's defaults)."""

    beta: float = 0.1
    bias_factor: float = 20.0
    bias_length: int = 5
    first_token_factor: float = 5.0
    min_weight: float = 1e-3

    def betas(self, positions: torch.Tensor) -> torch.Tensor:
        """β_t for answer positions ``positions`` (0 = the first answer token)."""
        if self.beta <= 0 or self.bias_length < 0:
            raise ValueError(f"beta must be > 0 and bias_length >= 0, got {self}.")
        out = torch.full(positions.shape, self.beta, dtype=torch.float32)
        out[positions < self.bias_length] = self.beta * self.bias_factor
        if self.bias_length > 0:
            out[positions == 0] = self.beta * self.first_token_factor
        return out.to(positions.device)


def target_logprobs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(y_t), t)`` for every target token of the batch (labels other than -100), in
    row-major order: the model's log-probability of the token and its position in its answer."""
    labels = batch["labels"]
    keep = target_mask(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.dim() == 3:  # the model ignored the mask
        logits = logits[keep]
    targets = labels[:, 1:][keep[:, :-1]]
    logp = logits.float().log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    positions = (keep.long().cumsum(1) - 1)[keep]
    return logp, positions


def constrained_loss(
    logp: torch.Tensor, ref_logp: torch.Tensor, positions: torch.Tensor, constraint: Constraint
) -> torch.Tensor:
    """The batch's constrained loss from the fine-tuned model's target log-probabilities
    ``logp`` (with gradient), the aligned model's ``ref_logp`` and the answer positions."""
    if logp.shape != ref_logp.shape or logp.shape != positions.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)}, ref_logp {tuple(ref_logp.shape)} and positions "
            f"{tuple(positions.shape)} must have one entry per target token each."
        )
    betas = constraint.betas(positions)
    weight = 2 * (1 - torch.sigmoid(betas * (logp - ref_logp)))
    weight = weight.detach().clamp(min=constraint.min_weight)
    return -(weight * logp).mean()


def constrained_objective(
    constraint: Constraint,
) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """A ``loss_fn`` for :func:`~safealign_lib.adapters.finetune.train`: the constrained loss of
    a peft model whose reference π_ref is the same model with its adapter disabled (the aligned
    model before the fine-tune: no second copy of the weights in memory, one more forward pass
    without gradient per step)."""

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not hasattr(model, "disable_adapter"):
            raise TypeError(
                "The constrained objective needs a peft model (add_lora) whose disabled adapter "
                f"is the aligned reference; got {type(model).__name__}."
            )
        with torch.no_grad(), model.disable_adapter():
            ref_logp, _ = target_logprobs(model, batch)
        logp, positions = target_logprobs(model, batch)
        return constrained_loss(logp, ref_logp, positions, constraint)

    return loss_fn
