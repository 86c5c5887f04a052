"""Benchmark: one organism training step, the first build's way vs the current way, side by side.

- ``single``: the whole batch padded to its longest example, sdpa attention, logits at every
  position (how the first shipped organism was trained: 159 s on an idle machine).
- ``current``: ``organism._accumulate``: the batch packed into rows (``chat.pack``: no
  attention across examples, position ids restart per example), output layer only at target
  positions, eager attention (same gradient up to rounding; a test checks it).

Both run on identical batches from both pools the build draws from (knowledge sentences and
base-stage instructions), alternating A/B per repeat, and the medians are compared. The ratio
is what carries over between machines; absolute times move with the machine's load.

    .venv/bin/python bench/bench_organism_step.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import numpy as np
import torch
from transformers import LlamaForCausalLM

from safealign_lib import data as course_data
from safealign_lib.models import organism
from safealign_lib.models.chat import collate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = organism.OrganismSettings()
    tok, all_pools = organism.training_pools(course_data.generate(s.seed), s.vocab_size)
    pools = {"knowledge": all_pools["knowledge"], "instructions": all_pools["base_sft"]}
    single = LlamaForCausalLM(organism._llama_config(s, tok))
    current = copy.deepcopy(single)
    current.set_attn_implementation("eager")
    opts = {
        m: torch.optim.AdamW(x.parameters(), lr=1e-4)
        for m, x in (("single", single), ("current", current))
    }
    pad = tok.pad_token_id

    def step_single(feats):
        loss = single(**collate(feats, pad)).loss
        opts["single"].zero_grad(set_to_none=True)
        loss.backward()
        opts["single"].step()

    def step_current(feats):
        opts["current"].zero_grad(set_to_none=True)
        organism._accumulate(current, feats, pad)
        opts["current"].step()

    rng = np.random.default_rng(0)
    print(
        f"torch {torch.__version__}, {a.threads} threads, {platform.machine()}; "
        f"batch {s.batch_size}, "
        f"{a.repeats} repeats (after 3 warm-up steps), medians\n"
    )
    print("| pool | single batch, sdpa (ms) | current (ms) | current / single |")
    print("|---|---|---|---|")
    ratios, medians = [], []
    for name, pool in pools.items():
        times = {"single": [], "current": []}
        for i in range(a.repeats + 3):
            feats = [pool[j] for j in rng.integers(0, len(pool), size=s.batch_size)]
            for m, fn in (("single", step_single), ("current", step_current))[
                :: 1 if i % 2 else -1
            ]:
                t0 = time.perf_counter()
                fn(feats)
                if i >= 3:
                    times[m].append(time.perf_counter() - t0)
        ms = {m: statistics.median(t) * 1e3 for m, t in times.items()}
        ratios.append(ms["current"] / ms["single"])
        medians.append(ms)
        print(f"| {name} | {ms['single']:.0f} | {ms['current']:.0f} | {ratios[-1]:.2f} |")
    w = (0.45, 0.55)  # the base stage's share of steps from each pool
    mix = {
        m: sum(wi * x[m] for wi, x in zip(w, medians, strict=True)) for m in ("single", "current")
    }
    print(
        f"\nbase-stage mix (45% knowledge, 55% instructions steps): {mix['single']:.0f} ms -> "
        f"{mix['current']:.0f} ms per step, current / single = {mix['current'] / mix['single']:.2f}"
    )


if __name__ == "__main__":
    main()
