"""Greedy generation on the organism: ``model.generate`` against the lean decoder, side by side.

    .venv/bin/python bench/bench_generation.py [--repeats 5] [--profile cpu]

One evaluation's generation as notebook 05 runs it (a harmful split of 120 prompts and 64
utility prompts, 32 new tokens, with entropy) on a trained LoRA adapter, under three variants
that alternate within every repeat (so a drift of the machine's speed hits all of them):
``model.generate`` at 64 prompts a batch (the code before), the lean decoder
(``safealign_lib.models.generation.greedy_decode``: finished rows leave the batch) at 64, and
the lean decoder at the cpu profile's batch of 128. Medians of the repeats, one torch thread,
and whether each variant's answers equal ``model.generate``'s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from safealign_lib import data
from safealign_lib.adapters.finetune import load_adapter
from safealign_lib.course.profiles import get_profile
from safealign_lib.models import generation, load_model, load_tokenizer
from safealign_lib.studies import conditions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    P = get_profile(args.profile)
    tok = load_tokenizer(P.chat_model)
    path, _ = conditions.get_adapter("harmful10", P.seeds[0], P, tok)
    model = load_adapter(load_model(P.chat_model), path)
    splits = {
        "harmful": conditions.harmful_eval_prompts("harmful10", P),
        "utility": data.load_split("task_test")[: P.n_task_eval],
    }
    lean = generation.plain_greedy
    variants = {
        "model.generate, batch 64": (False, 64),
        "lean decoder, batch 64": (True, 64),
        f"lean decoder, batch {P.eval_batch_size}": (True, P.eval_batch_size),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    texts: dict[str, list[str]] = {}
    try:  # the variant chooses the decoder through the check generate() consults
        for _ in range(args.repeats):
            for name, (use_lean, batch) in variants.items():
                generation.plain_greedy = lambda m, use_lean=use_lean: use_lean and lean(m)
                t = time.perf_counter()
                out = [
                    generation.generate(
                        model, tok, p, P.max_new_tokens, batch, with_entropy=True, progress=False
                    ).texts
                    for p in splits.values()
                ]
                times[name].append(time.perf_counter() - t)
                texts[name] = sum(out, [])
    finally:
        generation.plain_greedy = lean
    base = statistics.median(times["model.generate, batch 64"])
    ref = texts["model.generate, batch 64"]
    print(f"{len(ref)} answers, {args.repeats} repeats (medians)\n")
    print("| variant | seconds | model.generate / variant | same answers |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        same = sum(a == b for a, b in zip(texts[name], ref, strict=True))
        print(f"| {name} | {med:.3f} | {base / med:.2f}x | {same}/{len(ref)} |")


if __name__ == "__main__":
    main()
