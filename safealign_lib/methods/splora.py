"""SPLoRA (Ao et al., TACL 2025): score LoRA modules with E-DIEM and prune the unsafe ones.

Per LoRA module it compares X = s C B A (Safe LoRA's projected update) with Y = s B A through
their distance d = ||X - Y||_F, computed from r x r Gram matrices (see
:func:`safealign_lib.methods.safelora.lowrank_stats`), then scores d against an empirical null
(:func:`safealign_lib.methods.diem.ediem_empirical`). This is the course's reconstruction:

- ``null="layers"``: the distances of all modules (per module kind, e.g. all q_proj, with
  ``group="module"``, since q and v updates differ in size). Assumes most modules are typical
  and flags outliers; needs no extra computation.
- ``null="rotation"``: per module, the distances of the same update with its output
  directions rotated at random (``compute_projections(..., null_samples=64)``). Asks "is this
  update farther from its projection than a randomly oriented update of the same size?";
  assumes nothing about the other modules.

A bootstrap of one module's own distance is not offered: it centres on the distance itself,
which is the released code's degeneracy again (score ~ 0 for every module).

A high score means the update lies farther from the alignment subspace than the null: those
modules are pruned (``side="high"``). The released code's E-DIEM is degenerate (score ~ 1 for
every module, see :func:`safealign_lib.methods.diem.ediem_released`) and it prunes the *low* side, a
remnant of Safe LoRA's cosine rule; ``splora_scores(..., released=True)`` adds that score
next to the course's so both can be shown. Its number mode also prunes every module scoring
at or below the k-th highest score, keeping k - 1 modules; :func:`released_number_selection`
reproduces that, :func:`splora_select` picks exactly k.

Pruning removes the adapter modules (the LoRA layer becomes the plain ``nn.Linear`` it
wraps), so inference does less work, unlike the released code, which zeroes lora_B.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from safealign_lib import worklog
from safealign_lib.adapters.lora_io import (
    LORA_KEY,
    PathLike,
    check_new_output,
    read_adapter,
    write_adapter,
)
from safealign_lib.adapters.naming import inner_model, lora_modules
from safealign_lib.methods.diem import ediem_empirical, ediem_released, robust_centre_spread
from safealign_lib.methods.safelora import (
    LayerProjection,
    safelora_project,
    safelora_scores,
    select_modules,
)


@worklog.timed("scoring")
def splora_scores(
    projections: Mapping[str, LayerProjection],
    *,
    null: str = "layers",
    group: str | None = "module",
    released: bool = False,
) -> pd.DataFrame:
    """Safe LoRA's per-module table plus the course's E-DIEM (column ``ediem``).

    Columns added: ``ediem`` = (distance - null_centre) / null_spread, with the null's median
    and IQR in ``null_centre`` and ``null_spread``. ``group="module"`` builds the layers-null
    per module kind (``None``: one null for all modules; ignored by the rotation null).
    ``released=True`` adds ``ediem_released``, the released code's score, which needs the
    dense d_out x d_in update of each module (one at a time, float32, without s, as released).
    """
    df = safelora_scores(projections)
    if null == "layers":
        if group not in ("module", None):
            raise ValueError(f"group must be 'module' or None, got {group!r}.")
        keys = df["module"] if group == "module" else pd.Series("all", index=df.index)
        centre = pd.Series(float("nan"), index=df.index)
        spread = centre.copy()
        for _, idx in keys.groupby(keys).groups.items():
            d = torch.tensor(df.loc[idx, "distance"].to_numpy())
            if len(d) < 2:
                raise ValueError(
                    f"The layers-null needs >= 2 modules per group; {list(idx)} is alone. "
                    "Use group=None or null='rotation'."
                )
            c, s = robust_centre_spread(d)
            centre[idx], spread[idx] = float(c), float(s)
        null_d = None
    elif null == "rotation":
        missing = [n for n, p in projections.items() if p.null_distances is None]
        if missing:
            raise ValueError(
                f"No rotation null for {missing[:2]}...; compute the projections with "
                "compute_projections(..., null_samples=64)."
            )
        null_d = torch.stack([p.null_distances for p in projections.values()])
        c, s = robust_centre_spread(null_d)
        centre = pd.Series(c.numpy(), index=df.index)
        spread = pd.Series(s.numpy(), index=df.index)
    else:
        raise ValueError(f"Unknown null {null!r}; use 'layers' or 'rotation'.")
    # a spread a million times below the update's norm is float rounding, not variation
    flat = spread <= 1e-6 * df["norm_update"]
    if flat.any():
        raise ValueError(
            f"The {null} null has zero spread for {list(df.index[flat])[:2]}: all its "
            "distances are equal up to rounding (e.g. an exact projector of full rank maps "
            "every update to itself). No score can be read against it."
        )
    if null_d is not None:
        df["ediem"] = ediem_empirical(torch.tensor(df["distance"].to_numpy()), null_d).numpy()
    else:
        df["ediem"] = (df["distance"] - centre) / spread
    df["null_centre"], df["null_spread"] = centre, spread
    if released:
        df["ediem_released"] = [
            ediem_released(p.CB @ p.factors.A, p.factors.B @ p.factors.A)
            for p in projections.values()
        ]
    return df


def ediem_comparison(projections: Mapping[str, LayerProjection]) -> pd.DataFrame:
    """Every E-DIEM variant side by side, one row per module (notebook 04).

    :func:`splora_scores` with the layers null (column ``ediem``) and the released score
    (``ediem_released``, float32 as released), plus ``ediem_rotation`` (the rotation null: the
    projections need ``null_samples``), ``ediem_released_float64`` (the released score computed
    in float64, where its rounding is a million times smaller) and ``module_label``
    (``"L3 q"``: block 3's q_proj) for plots.
    """
    df = splora_scores(projections, null="layers", released=True)
    df["ediem_rotation"] = splora_scores(projections, null="rotation")["ediem"]
    df["ediem_released_float64"] = [
        ediem_released((p.CB @ p.factors.A).double(), (p.factors.B @ p.factors.A).double())
        for p in projections.values()
    ]
    df["module_label"] = "L" + df.block.astype(str) + " " + df.module.str.replace("_proj", "")
    return df


def score_spreads(
    scores: pd.DataFrame, columns: Sequence[str], by: Sequence[str] = ("condition", "seed")
) -> pd.DataFrame:
    """Max - min of each score column over the modules of one adapter (one row per ``by`` group)."""
    groups = scores.groupby(list(by))[list(columns)]
    return groups.max() - groups.min()


def rank_correlations(
    scores: pd.DataFrame,
    columns: Sequence[str],
    against: str = "cosine",
    by: Sequence[str] = ("condition", "seed"),
) -> pd.DataFrame:
    """Spearman correlation of each score column with ``against`` across the modules of one
    adapter (one row per ``by`` group)."""
    return pd.DataFrame(
        {
            key: d[list(columns)].corrwith(d[against], method="spearman")
            for key, d in scores.groupby(list(by))
        }
    ).T


def splora_select(
    scores: pd.DataFrame | pd.Series,
    *,
    k: int | None = None,
    threshold: float | None = None,
    column: str = "ediem",
) -> list[str]:
    """Modules to prune: exactly the ``k`` highest E-DIEM scores, or all with score >= threshold."""
    s = scores[column] if isinstance(scores, pd.DataFrame) else scores
    return select_modules(s, k=k, threshold=threshold, side="high")


def released_number_selection(scores: pd.Series | Mapping[str, float], k: int) -> list[str]:
    """What SPLoRA's **released** number mode prunes, reproduced to show its off-by-one.

    It takes the k-th highest score as a threshold and prunes every module at or below it, so
    it keeps only the k - 1 highest-scoring modules (and prunes L - k + 1).
    """
    s = pd.Series(scores, dtype=float)
    if int(k) != k or not 1 <= k <= len(s):
        raise ValueError(f"k must be an integer in [1, {len(s)}], got {k}.")
    thr = s.sort_values(ascending=False).iloc[int(k) - 1]
    return list(s.index[s <= thr])


class AdapterSwitch:
    """Switch one loaded peft model between its trained adapter, Safe LoRA's projection of some
    modules and SPLoRA's pruning of some modules, without reloading it.

    Pruning here zeroes ``lora_B``: the same function as removing the module (see
    :func:`prune_peft_model`), cheap to undo while sweeping k. Every :meth:`apply` first
    restores the trained ``lora_B`` of every module, so settings never compound.
    """

    METHODS = ("LoRA", "Safe LoRA", "SPLoRA")

    def __init__(
        self,
        model: torch.nn.Module,
        projections: Mapping[str, LayerProjection] | None = None,
        adapter_name: str = "default",
    ):
        self.model, self.projections, self.adapter_name = model, projections, adapter_name
        self.modules = lora_modules(model, adapter_name)
        self._b0 = {
            n: m.lora_B[adapter_name].weight.detach().clone() for n, m in self.modules.items()
        }

    def apply(self, method: str = "LoRA", names: Iterable[str] = ()) -> torch.nn.Module:
        """Restore the trained adapter, then project (``"Safe LoRA"``) or prune (``"SPLoRA"``)
        the modules ``names`` (base-weight names, as in the score tables). Returns the model."""
        if method not in self.METHODS:
            raise ValueError(f"Unknown method {method!r}; choose one of {self.METHODS}.")
        names = list(names)
        unknown = [n for n in _module_names(names) if n not in self.modules]
        if unknown:
            raise KeyError(
                f"No LoRA module {unknown[0]!r} in this model; names come from the score table "
                "of the same adapter (e.g. 'model.layers.0.self_attn.q_proj.weight')."
            )
        with torch.no_grad():
            for n, m in self.modules.items():
                m.lora_B[self.adapter_name].weight.copy_(self._b0[n])
            if method == "Safe LoRA":
                if self.projections is None:
                    raise ValueError(
                        "Safe LoRA needs the projections: AdapterSwitch(model, projections)."
                    )
                safelora_project(self.model, self.projections, names, self.adapter_name)
            elif method == "SPLoRA":
                for n in _module_names(names):
                    self.modules[n].lora_B[self.adapter_name].weight.zero_()
        return self.model


def _module_names(names: Iterable[str]) -> list[str]:
    return [n.removesuffix(".weight") for n in names]


def prune_peft_model(
    model: torch.nn.Module, names: Iterable[str], adapter_name: str = "default"
) -> torch.nn.Module:
    """Remove the LoRA modules ``names`` from a live peft model, in place.

    Each pruned LoRA layer is replaced by the ``nn.Linear`` it wraps, so it costs nothing at
    inference, and the adapter config's ``target_modules`` is narrowed to the kept modules so
    that ``save_pretrained`` writes an adapter that reloads exactly (pruned modules stay plain).
    """
    modules = lora_modules(model, adapter_name)
    prune = _module_names(names)
    unknown = [n for n in prune if n not in modules]
    if unknown:
        raise KeyError(
            f"{unknown[:3]} are not LoRA modules of this model; known: {list(modules)[:3]}..."
        )
    keep = sorted(set(modules) - set(prune))
    if not keep:
        raise ValueError("Pruning every LoRA module leaves no adapter; use the base model itself.")
    for n in prune:
        m = modules[n]
        if len(m.lora_A) > 1:
            raise ValueError(
                f"{n} holds several adapters ({list(m.lora_A)}); prune works on one adapter."
            )
        if getattr(m, "merged", False):
            raise ValueError(
                f"{n} has its adapter merged into the base weight; unmerge it before pruning."
            )
    inner = inner_model(model)
    for n in prune:
        parent, _, child = n.rpartition(".")
        setattr(
            inner.get_submodule(parent) if parent else inner, child, modules[n].get_base_layer()
        )
    configs = getattr(model, "peft_config", None)
    if configs is not None and adapter_name in configs:
        configs[adapter_name].target_modules = set(keep)
    return model


def prune_adapter(
    config: dict, state: Mapping[str, torch.Tensor], names: Iterable[str]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Drop the modules ``names`` from an adapter's (config, state dict).

    The state dict loses their lora_A/lora_B; the config's ``target_modules`` becomes the list
    of kept module names, so that PeftModel.from_pretrained wraps only those.
    """
    modules: dict[str, list[str]] = {}
    for key in state:
        m = LORA_KEY.match(key)
        if m:
            modules.setdefault(m.group("module"), []).append(key)
    prune = _module_names(names)
    unknown = [n for n in prune if n not in modules]
    if unknown:
        raise KeyError(
            f"{unknown[:3]} are not LoRA modules of this adapter; known: {list(modules)[:3]}..."
        )
    keep = sorted(set(modules) - set(prune))
    if not keep:
        raise ValueError("Pruning every LoRA module leaves no adapter; use the base model itself.")
    dropped = {k for n in prune for k in modules[n]}
    new_config = dict(config)
    new_config["target_modules"] = keep
    return new_config, {k: v for k, v in state.items() if k not in dropped}


def prune_adapter_dir(adapter_dir: PathLike, names: Iterable[str], out_dir: PathLike) -> Path:
    """Write a copy of an adapter folder without the modules ``names`` (peft format) to
    ``out_dir`` (never the input folder: the trained adapter is kept)."""
    check_new_output(out_dir, adapter_dir)
    return write_adapter(out_dir, *prune_adapter(*read_adapter(adapter_dir), names))
