"""Deterministic LoRA fine-tuning through peft.

``add_lora`` wraps any causal LM with peft's LoRA; ``train`` runs a small, seeded AdamW loop
over chat examples (loss on the response tokens only) and works for any model whose
trainable parameters are already chosen, so SaLoRA and plain LoRA share the same loop.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel, get_peft_model
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.adapters import train_memo
from safealign_lib.adapters.lora_io import check_adapter_dir
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    padding_id,
    tokenize_example,
)


@dataclass
class TrainResult:
    """What a run produced: per-step loss, wall time and parameter counts."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_trainable: int = 0
    n_total: int = 0
    # read back from the cache (seconds: the recorded time of the run that trained it)
    cached: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - user code may use the legacy global RNG
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def check_target_modules(model: torch.nn.Module, target_modules: Sequence[str]) -> None:
    """Fail early, with the available names, when a target module does not exist."""
    names = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    missing = [t for t in target_modules if t not in names]
    if missing:
        raise ValueError(
            f"Target module(s) {missing} not found in {type(model).__name__}; "
            f"linear layers available: {sorted(names)}."
        )


def add_lora(model: PreTrainedModel, lora: LoraSettings, seed: int = 0) -> PeftModel:
    """Wrap ``model`` with fresh LoRA adapters (A random with ``seed``, B = 0)."""
    check_target_modules(model, lora.target_modules)
    torch.manual_seed(seed)
    return get_peft_model(model, lora.to_peft())


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    settings: TrainSettings,
    desc: str = "fine-tune",
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad on ``examples`` (loss on the answer
    tokens, or on all tokens with ``settings.loss_on="all"``).

    ``loss_fn(model, batch)`` replaces the plain :func:`answer_loss`, e.g. the token-wise
    constrained objective (:func:`~safealign_lib.adapters.constrained.constrained_objective`).

    Batches are drawn by a seeded shuffle, cycling through the data as often as ``steps``
    needs; the same seed on the same machine gives the same weights.
    """
    if len(examples) == 0:
        raise ValueError("No training examples: the fine-tuning set is empty.")
    if settings.steps < 1 or settings.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("The model has no trainable parameters; add adapters first (add_lora).")
    seed_everything(settings.seed)
    feats = [
        tokenize_example(tokenizer, ex, settings.max_length, settings.loss_on) for ex in examples
    ]
    return train_memo.remember_training(
        model,
        feats,
        settings,
        loss_fn,
        lambda: _train(model, tokenizer, feats, settings, desc, loss_fn, params),
    )


def _train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    feats: Sequence[dict[str, torch.Tensor]],
    settings: TrainSettings,
    desc: str,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None,
    params: list[torch.nn.Parameter],
) -> TrainResult:
    """:func:`train`'s loop on tokenized examples, without the cache."""
    pad_id = padding_id(tokenizer)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed)
    order: list[int] = []
    result = TrainResult()
    result.n_trainable, result.n_total = count_parameters(model)
    model.train()
    t0 = time.perf_counter()
    with worklog.record("training") as w:
        for _ in tqdm(range(settings.steps), desc=desc, disable=not settings.progress, leave=False):
            if len(order) < settings.batch_size:
                order += rng.permutation(len(feats)).tolist()
            idx, order = order[: settings.batch_size], order[settings.batch_size :]
            batch = {k: v.to(device) for k, v in collate([feats[i] for i in idx], pad_id).items()}
            w["tokens"] += batch["input_ids"].numel()
            loss = (loss_fn or answer_loss)(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Loss became {loss.item()}; lower the learning rate (now {settings.lr})."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            opt.step()
            result.losses.append(float(loss.detach()))
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is a target (label other than -100): position t predicts
    token t + 1. A batch without any is a clear error."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    if not keep.any():
        raise ValueError(
            "A training batch has no target tokens: every answer was cut off or masked. "
            "Raise max_length in the training settings, or check the examples' answers."
        )
    return keep


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The batch's mean next-token loss over its targets (labels other than -100), with the
    output layer applied only where a position has a target.

    The same loss as ``model(**batch).loss``, but prompts and padding skip the vocabulary
    projection and its softmax (about 8% of a LoRA step on the organism's task sets, where a
    fifth of the positions have a target; see bench/bench_train_step.py): the model gets a
    boolean ``logits_to_keep`` mask, which transformers' causal LMs apply before their output
    layer. A model that ignores the mask returns every position's logits, and the mask is then
    applied here.
    """
    labels = batch["labels"]
    keep = target_mask(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.dim() == 3:  # the model ignored the mask: all positions came back
        logits = logits[keep]
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])


def save_adapter(model: PeftModel, out_dir: str | os.PathLike) -> Path:
    """Save LoRA adapters in peft's format (adapter_config.json + adapter_model.safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def load_adapter(base_model: PreTrainedModel, adapter_dir: str | os.PathLike) -> PeftModel:
    """Load peft adapters saved by :func:`save_adapter` on top of ``base_model`` (eval mode).

    Only safetensors adapters load: a folder with just a pickled ``adapter_model.bin`` is
    refused, and a corrupt config or weights file is named in the error."""
    path = Path(adapter_dir)
    check_adapter_dir(path)
    model = PeftModel.from_pretrained(base_model, str(path))
    model.eval()
    return model
