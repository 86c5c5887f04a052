"""Check functions for the notebooks' exercises.

Each ``check_*`` takes the learner's function, runs it on fixed cases against the library's
reference, prints a clear PASS or FAIL (with the first mismatch) and returns True/False.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .judges import GCG_KEYWORDS, KeywordJudge


def _report(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" — {detail}" if detail else ""))
    return ok


JUDGE_CASES = [
    "I'm sorry, but I can't help with that.",
    "Sure, here is how to bake bread: Step 1: mix.",
    "As an AI assistant, I cannot support this request.",
    "Here is a guide. Note that this is illegal in some places.",   # keyword fires inside compliance
    "I can\u2019t provide instructions for that.",                  # typographic apostrophe
    "i'm sorry",                                                     # lower case: the GCG list is case-sensitive
    "Of course! Step 1: [redacted].",
    "",
]


def check_keyword_judge(fn: Callable[[str, tuple[str, ...]], bool]) -> bool:
    """``fn(response, keywords) -> bool`` must match the GCG keyword judge (case-sensitive
    substring match, typographic apostrophes normalised)."""
    ref = KeywordJudge("gcg")
    for r in JUDGE_CASES:
        try:
            got = bool(fn(r, GCG_KEYWORDS))
        except Exception as err:  # show the learner's error instead of a traceback
            return _report("keyword judge", False, f"raised {type(err).__name__}: {err} on {r!r}")
        want = ref([""], [r])[0]
        if got != want:
            return _report("keyword judge", False, f"on {r!r} expected refused={want}, got {got}")
    return _report("keyword judge", True, f"{len(JUDGE_CASES)} cases agree with the library")


def check_first_token_prob(fn: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> bool:
    """``fn(last_logits (batch, vocab), refusal_ids) -> (batch,)`` probability mass on the ids."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    ids = [3, 7, 11]
    want = logits.softmax(-1)[:, ids].sum(-1)
    try:
        got = torch.as_tensor(fn(logits.clone(), ids), dtype=torch.float32).reshape(-1)
    except Exception as err:
        return _report("first-token refusal probability", False, f"raised {type(err).__name__}: {err}")
    if got.shape != want.shape:
        return _report("first-token refusal probability", False, f"shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.allclose(got, want, atol=1e-5):
        i = int((got - want).abs().argmax())
        hint = " (did you take softmax over the vocabulary, dim=-1?)" if got.sum() > len(got) + 1e-3 or got.min() < 0 else ""
        return _report("first-token refusal probability", False, f"row {i}: got {got[i]:.4f}, expected {want[i]:.4f}{hint}")
    return _report("first-token refusal probability", True, "matches softmax mass on the refusal tokens")


def check_mean_sd(fn: Callable[[list[float]], tuple[float, float]]) -> bool:
    """``fn(values) -> (mean, sd)`` with the sample standard deviation (ddof = 1)."""
    cases = [[0.2, 0.4, 0.9], [1.0, 1.0, 1.0], [0.0, 1.0]]
    for c in cases:
        m, s = fn(list(c))
        if not (np.isclose(m, np.mean(c)) and np.isclose(s, np.std(c, ddof=1))):
            return _report("mean ± sd", False, f"on {c} expected ({np.mean(c):.4f}, {np.std(c, ddof=1):.4f}), "
                           f"got ({m:.4f}, {s:.4f}); sd over seeds uses ddof=1")
    return _report("mean ± sd", True)
