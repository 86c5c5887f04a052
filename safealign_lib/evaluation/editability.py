"""Can an adapter be edited module by module? Update size and the cost of removing modules.

Safe LoRA projects some modules of an adapter and SPLoRA removes some; both assume that one
module can change while the rest keep working. That holds when each module's update is small
beside its weight (a real 135M-parameter model at the papers' settings: about 0.006 of it) and
fails when the updates are of the order of the weights themselves: the modules then lean on
each other, and a partly removed adapter writes word salad. Two measures:

- :func:`update_ratios`: ``||s B A||_F / ||W||_F`` per LoRA module;
- :func:`removal_curve`: a score (e.g. utility) after removing ``m`` random modules, over
  several random draws per ``m``; removal zeroes ``lora_B`` (the same function as deleting the
  module) inside :func:`without_modules`, which restores the adapter afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from safealign_lib.adapters.naming import lora_modules


def update_ratios(model: torch.nn.Module, adapter_name: str = "default") -> pd.Series:
    """``||s B A||_F / ||W||_F`` of every LoRA module of a live peft model, indexed by the base
    weight's name (``model.layers.0.self_attn.q_proj.weight``)."""
    out = {}
    with torch.no_grad():
        for name, m in lora_modules(model, adapter_name).items():
            a = m.lora_A[adapter_name].weight.float()
            b = m.lora_B[adapter_name].weight.float()
            w = m.get_base_layer().weight.float()
            out[name + ".weight"] = float((m.scaling[adapter_name] * b @ a).norm() / w.norm())
    if not out:
        raise ValueError("The model has no LoRA modules; load an adapter first.")
    return pd.Series(out, name="dw_rel")


@contextmanager
def without_modules(
    model: torch.nn.Module, names: Iterable[str], adapter_name: str = "default"
) -> Iterator[torch.nn.Module]:
    """The model with the LoRA modules ``names`` removed (``lora_B`` zeroed) inside the block,
    and exactly as it was after it."""
    modules = lora_modules(model, adapter_name)
    names = [n.removesuffix(".weight") for n in names]
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise KeyError(
            f"{unknown[:3]} are not LoRA modules of this model; e.g. {next(iter(modules))}."
        )
    saved = {n: modules[n].lora_B[adapter_name].weight.detach().clone() for n in names}
    try:
        with torch.no_grad():
            for n in names:
                modules[n].lora_B[adapter_name].weight.zero_()
        yield model
    finally:
        with torch.no_grad():
            for n, b in saved.items():
                modules[n].lora_B[adapter_name].weight.copy_(b)


def removal_curve(
    model: torch.nn.Module,
    score: Callable[[torch.nn.Module], Mapping[str, float]],
    ms: Sequence[int],
    draws: int,
    seed: int = 0,
    adapter_name: str = "default",
) -> pd.DataFrame:
    """``score(model)`` after removing ``m`` random LoRA modules, ``draws`` times for each ``m``
    in ``ms`` (once where ``m`` is every module): one row per (m, draw) with the removed
    modules and the score's values. Draws come from ``numpy.random.default_rng(seed)``."""
    names = list(lora_modules(model, adapter_name))
    if draws < 1 or any(m < 0 or m > len(names) for m in ms):
        raise ValueError(
            f"draws must be >= 1 and every m in 0..{len(names)} (the adapter's modules); "
            f"got draws={draws}, ms={list(ms)}."
        )
    rng = np.random.default_rng(seed)
    rows = []
    for m in ms:
        for d in range(draws if 0 < m < len(names) else 1):
            pick = sorted(rng.choice(len(names), size=m, replace=False).tolist())
            removed = [names[i] for i in pick]
            with without_modules(model, removed, adapter_name):
                values = dict(score(model))
            rows.append({"m": m, "draw": d, "removed": removed, **values})
    return pd.DataFrame(rows)
