"""Safety data to mix into a fine-tune (Bianchi et al., ICLR 2024, "Safety-tuned LLaMAs"; Qi et
al. 2024's mitigation): harmful requests answered with the aligned model's refusals.

The refusals come from the ``safety`` split (the harmful half of the chat model's alignment
data: training templates only), never from an evaluation split: the evaluation's held-out
templates and unseen tasks stay unseen. They reuse the alignment data's tasks, so a method that
uses them must also be judged on ``harmful_unseen`` (tasks no instruction data ever showed).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from safealign_lib.data.example import ChatExample
from safealign_lib.data.splits import load_split, subsample


def refusal_examples(n: int, seed: int = 0) -> list[ChatExample]:
    """``n`` harmful requests with the chat model's refusals, a seeded subsample of ``safety``."""
    pool = load_split("safety")
    if not 0 <= n <= len(pool):
        raise ValueError(f"n must be in 0..{len(pool)} (the safety split's size), got {n}.")
    return subsample(pool, n, seed)


def with_safety_data(examples: Sequence[ChatExample], n: int, seed: int = 0) -> list[ChatExample]:
    """``examples`` plus ``n`` refusal examples (:func:`refusal_examples`), in a seeded order."""
    out = list(examples) + refusal_examples(n, seed)
    random.Random(seed).shuffle(out)
    return out
