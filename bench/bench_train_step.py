"""A LoRA training step on the organism: logits everywhere against logits at the targets only.

    .venv/bin/python bench/bench_train_step.py [--repeats 5] [--steps 8] [--profile cpu]

For three of notebook 01's fine-tuning sets (short and long harmful answers, instructions),
the same batches (the profile's batch size, seeded) go through a forward and backward pass of
a fresh LoRA model under two variants that alternate within every repeat, so a drift of the
machine's speed hits both: ``model(**batch).loss`` (the loss before: the vocabulary projection
and its softmax at every position, prompts and padding included) and
``finetune.answer_loss`` (only where a position has a target). Medians of the repeats, one
torch thread, milliseconds per step, and the largest loss difference between the variants.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safealign_lib.adapters.finetune import add_lora, answer_loss
from safealign_lib.course.profiles import get_profile
from safealign_lib.models import load_model, load_tokenizer
from safealign_lib.models.chat import collate, padding_id, tokenize_example
from safealign_lib.studies import conditions

CONDITIONS = ("harmful10", "harmful100", "benign_instruct")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8, help="batches per variant and repeat")
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    P = get_profile(args.profile)
    tok = load_tokenizer(P.chat_model)
    variants = {
        "model(**batch).loss (before)": lambda m, b: m(**b).loss,
        "answer_loss (after)": answer_loss,
    }
    print(f"| set | {' | '.join(variants)} | after / before | max loss difference |")
    print("|---|---|---|---|---|")
    for cond in CONDITIONS:
        s = conditions.train_settings(cond, P, P.seeds[0])
        feats = [
            tokenize_example(tok, e, s.max_length, s.loss_on)
            for e in conditions.training_examples(cond, P, P.seeds[0])
        ]
        gen = torch.Generator().manual_seed(0)
        batches = [
            collate(
                [feats[i] for i in torch.randperm(len(feats), generator=gen)[: s.batch_size]],
                padding_id(tok),
            )
            for _ in range(args.steps)
        ]
        model = add_lora(load_model(P.chat_model), P.lora, seed=0)
        model.train()
        times: dict[str, list[float]] = {v: [] for v in variants}
        losses: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.repeats):
            for name, loss_fn in variants.items():
                t = time.perf_counter()
                out = []
                for b in batches:
                    model.zero_grad(set_to_none=True)
                    loss = loss_fn(model, b)
                    loss.backward()
                    out.append(float(loss.detach()))
                times[name].append((time.perf_counter() - t) / len(batches))
                losses[name] = out
        ms = [1000 * statistics.median(times[v]) for v in variants]
        a, b = losses.values()
        diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
        print(
            f"| {cond} | {' | '.join(f'{x:.1f}' for x in ms)} | {ms[1] / ms[0]:.3f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
