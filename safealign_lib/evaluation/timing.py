"""Latency measured fairly on a shared machine: short calls, interleaved, summarised robustly.

    calls = {name: generate_call(model, inputs, new_tokens=8) for name, model in models.items()}
    times = interleaved_times(calls, repeats=15)        # seconds per call and round
    table = timing_table(times, reference="full")        # median, min, IQR, ratios to "full"

Every call is warmed up once, then each round times every call once, the order rotating by one
place per round, so that no variant always runs first (after a pause, with cold caches) and a
burst of load from other programs falls on all variants alike. Medians resist those bursts; the
minimum is the least disturbed run; the IQR says how much a single timing can be trusted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import pandas as pd
import torch


def rotated(names: list[str], round_index: int) -> list[str]:
    """``names`` rotated left by ``round_index`` places (modulo their number)."""
    i = round_index % len(names)
    return names[i:] + names[:i]


def interleaved_times(
    calls: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each call over ``repeats`` rounds (after ``warmup`` untimed rounds);
    each round runs every call once, in an order that rotates every round."""
    if repeats < 1 or not calls:
        raise ValueError(f"Need at least one call and repeats >= 1, got {len(calls)}, {repeats}.")
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, r):
            t = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t)
    return times


def timing_table(
    times: Mapping[str, list[float]], reference: str | None = None, label: str | None = None
) -> pd.DataFrame:
    """One row per call: ``median s``, ``min s`` and ``IQR s``; with ``reference`` (a call's
    name) also ``median vs <label>`` and ``min vs <label>``, the ratios to that call's
    (``label`` defaults to the reference's name)."""
    names = list(times)
    table = pd.DataFrame(
        {
            "median s": [np.median(times[n]) for n in names],
            "min s": [np.min(times[n]) for n in names],
            "IQR s": [np.subtract(*np.percentile(times[n], [75, 25])) for n in names],
        },
        index=names,
    )
    if reference is not None:
        label = reference if label is None else label
        for stat in ("median", "min"):
            table[f"{stat} vs {label}"] = table[f"{stat} s"] / table.loc[reference, f"{stat} s"]
    return table


def generate_call(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    new_tokens: int = 8,
    pad_token_id: int | None = None,
) -> Callable[[], object]:
    """A call that greedily generates exactly ``new_tokens`` tokens for the batch ``inputs``
    (the same amount of work on every call, whatever the model answers)."""
    return partial(
        model.generate,
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad_token_id,
    )
