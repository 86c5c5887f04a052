"""Notebook 06's training costs side by side: a plain LoRA step against the constrained
objective's step, and the peak memory each adds.

    .venv/bin/python bench/bench_keep_safety.py [--repeats 5] [--steps 8] [--profile cpu]

On the testbed's fine-tuning set (``skill_mixed``, the pre-registered recipe: LoRA on all seven
linear maps, batch 16), the same seeded batches go through a forward and backward pass of one
LoRA model with the plain answer loss and with the token-wise constrained loss (its reference:
the adapter disabled, one more forward pass without gradient). The two variants alternate within
every repeat, so a drift of the machine's speed hits both. Medians of the repeats, one torch
thread, milliseconds per step. Safety data trains the same steps on a larger set (the same cost
per step); the recovery realignment is a one-off of its own (its seconds are in notebook 06).
The peak of the Python allocator is not torch's: memory is reported as what each variant keeps
alive beyond the plain step (the reference's log-probabilities: one float per target token).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safealign_lib.adapters.constrained import Constraint, constrained_objective
from safealign_lib.adapters.finetune import add_lora, answer_loss
from safealign_lib.course.profiles import get_profile
from safealign_lib.models import load_model, load_tokenizer
from safealign_lib.models.chat import collate, padding_id, tokenize_example
from safealign_lib.studies import conditions

CONDITION = "skill_mixed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="batches per variant and repeat")
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    P = get_profile(args.profile)
    tok = load_tokenizer(P.chat_model)
    s = conditions.train_settings(CONDITION, P, 0)
    feats = [
        tokenize_example(tok, e, s.max_length, s.loss_on)
        for e in conditions.training_examples(CONDITION, P, 0)
    ]
    gen = torch.Generator().manual_seed(0)
    batches = [
        collate(
            [feats[i] for i in torch.randperm(len(feats), generator=gen)[: s.batch_size]],
            padding_id(tok),
        )
        for _ in range(args.steps)
    ]
    model = add_lora(load_model(P.chat_model), conditions.lora_settings(CONDITION, P), seed=0)
    model.train()
    variants = {"plain LoRA": answer_loss, "constrained": constrained_objective(Constraint())}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for name, loss_fn in variants.items():
            t = time.perf_counter()
            for b in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model, b).backward()
            times[name].append((time.perf_counter() - t) / len(batches))
    ms = {v: 1000 * statistics.median(t) for v, t in times.items()}
    targets = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    print(f"| objective | ms per step (median of {args.repeats}) | ratio to plain |")
    print("|---|---|---|")
    for v, x in ms.items():
        print(f"| {v} | {x:.1f} | {x / ms['plain LoRA']:.2f} |")
    print(
        f"\nextra memory of the constrained step: the reference's log-probabilities, "
        f"{targets:.0f} floats a batch (about {4 * targets / 1024:.1f} KiB); no second model."
    )


if __name__ == "__main__":
    main()
