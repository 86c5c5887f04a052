"""Safe LoRA (Hsu et al., NeurIPS 2024) with low-rank algebra, and the adapter glue it needs.

Pipeline (every step also serves SPLoRA, :mod:`safealign_lib.methods.splora`)::

    proj = compute_projections(adapter_dir, "data/organism/base", "data/organism/chat")
    df = safelora_scores(proj)                                # cosine per LoRA module
    names = select_modules(df["cosine"], k=2, side="low")     # the least aligned modules
    safelora_project(peft_model, proj, names)                 # lora_B <- C lora_B, in place

``compute_projections`` takes an adapter folder, a live peft model or the factors that
:func:`~safealign_lib.adapters.lora_io.load_lora_factors` returns ({weight name: (A, B, scale)}).

Vocabulary: a *block* is one decoder layer; a *module* is one adapted linear weight (a LoRA
module), e.g. block 3's ``q_proj``.

Conventions. Shapes follow PEFT: ``A`` is ``lora_A`` (r, d_in), ``B`` is ``lora_B`` (d_out, r)
and the update is ``dW = s B A`` with ``s = lora_alpha / r`` (``alpha / sqrt(r)`` under
rsLoRA). Modules are keyed by the base model's weight name,
e.g. ``model.layers.3.self_attn.q_proj.weight``.

The alignment matrix of a weight is ``V = W_chat - W_base``. The released "projection" is
``C = V V^T / ||V||_F`` (not idempotent: its eigenvalues are sigma_i^2 / ||V||_F, so it also
rescales); the exact projector onto V's column space is ``V (V^T V)^+ V^T``. Neither is ever
formed here: ``C X = V (V^T X) / ||V||_F`` costs O(d^2 r), and cosines, norms and distances of
``C dW`` vs ``dW`` come from r x r Gram matrices, never from a dense d x d update. Weights
are streamed one tensor at a time from safetensors files, so two 7B models never sit in
memory together (the released code loads both in fp32: about 54 GB).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from safealign_lib import worklog
from safealign_lib.adapters.lora_io import (
    LoraFactors,
    PathLike,
    check_new_output,
    load_lora_factors,
    lora_state_key,
    read_adapter,
    write_adapter,
)
from safealign_lib.adapters.naming import block_and_module, lora_modules
from safealign_lib.adapters.weights import (
    RowWorkers,
    SafetensorsWeights,
    as_weights,
    checked_norm,
    difference_pass,
    difference_times,
    load_pair,
    read_alignment,
)

# --- projectors -----------------------------------------------------------------------------------


class Projector:
    """The map X -> C X of one alignment matrix V, applied without forming a d x d matrix.

    ``kind="approx"``: the released C = V V^T / ||V||_F. ``kind="exact"``: the orthogonal
    projector U U^T onto V's column space (U from an SVD of V, singular values above
    ``rtol * sigma_max`` kept; ``rank`` keeps only the top ``rank`` directions). A full-rank
    square V makes the exact projector the identity: then no update is ever changed.
    """

    def __init__(self, kind: str, factor: torch.Tensor, norm: float = 1.0):
        self.kind, self._factor, self._norm = kind, factor, norm

    @classmethod
    def from_alignment(
        cls,
        v: torch.Tensor,
        kind: str = "approx",
        *,
        rtol: float | None = None,
        rank: int | None = None,
        fro_norm: float | None = None,
    ) -> Projector:
        """Build the projector of ``v`` (d_out, d_in); ``fro_norm`` = ||V||_F if already known.

        The approx projector keeps a reference to ``v``: do not change ``v`` while using it.
        """
        if v.ndim != 2:
            raise ValueError(
                f"An alignment matrix is 2-D (d_out, d_in); got shape {tuple(v.shape)}."
            )
        if kind == "approx":
            norm = float(torch.linalg.matrix_norm(v)) if fro_norm is None else float(fro_norm)
            if norm == 0.0:
                raise ValueError(
                    "The alignment matrix is zero (chat and base weights are identical), so "
                    "C = V V^T / ||V||_F is undefined; leave this module out."
                )
            return cls("approx", v, norm)
        if kind == "exact":
            u, s, _ = torch.linalg.svd(v, full_matrices=False)
            tol = (rtol if rtol is not None else max(v.shape) * torch.finfo(v.dtype).eps) * float(
                s[0]
            )
            keep = int((s > tol).sum())
            if rank is not None:
                if not 1 <= rank <= min(v.shape):
                    raise ValueError(f"rank must be in [1, {min(v.shape)}], got {rank}.")
                keep = min(keep, rank)
            if keep == v.shape[0]:
                warnings.warn(
                    f"V has full column rank ({keep}): the exact projector is the identity and "
                    "changes no update. Pass rank=... to project on V's top directions.",
                    stacklevel=2,
                )
            return cls("exact", u[:, :keep].contiguous())
        raise ValueError(f"Unknown projector kind {kind!r}; use 'approx' (released) or 'exact'.")

    @property
    def d_out(self) -> int:
        return self._factor.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """C @ x for x of shape (d_out, k), in O(d_out * d_in * k)."""
        if x.shape[0] != self.d_out:
            raise ValueError(
                f"The projector acts on {self.d_out} rows; got x of shape {tuple(x.shape)}."
            )
        f = self._factor
        # (x^T f)^T rather than f^T x: BLAS is ~10x faster on this layout for thin x
        y = x.to(f.dtype).T @ f
        out = f @ y.T
        return out / self._norm if self.kind == "approx" else out

    def dense(self) -> torch.Tensor:
        """The d_out x d_out matrix itself: for teaching on small layers only."""
        return self.apply(torch.eye(self.d_out, dtype=self._factor.dtype))


def _random_frames(d: int, r: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n Haar-random orthonormal d x r frames, side by side: shape (d, n * r)."""
    g = torch.randn(n, d, r, generator=gen, dtype=torch.float64)
    q, rr = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)  # sign fix -> Haar
    return q.permute(1, 0, 2).reshape(d, n * r)


@worklog.timed("scoring")
def rotation_null_distances(
    projector: Projector, factors: LoraFactors, n_samples: int, seed: int = 0
) -> torch.Tensor:
    """Distances ||C Q dW - Q dW||_F for ``n_samples`` Haar-random rotations Q of the output space.

    The null of "this update's direction has nothing to do with the alignment matrix": same
    singular values and input side as dW, output directions drawn at random. Q B has the law of
    U R where B = U_B R (thin QR) and U is a random orthonormal frame, so each sample costs
    O(d_out d_in r) and no d x d matrix is formed.
    """
    if n_samples < 2:
        raise ValueError(f"A rotation null needs n_samples >= 2, got {n_samples}.")
    gen = torch.Generator().manual_seed(seed)
    b = factors.B.double()
    _, r_b = torch.linalg.qr(b)
    frames = _random_frames(b.shape[0], factors.r, n_samples, gen)
    diff = (projector.apply(frames).double() - frames).reshape(b.shape[0], n_samples, factors.r)
    d = torch.einsum("dsr,rk->sdk", diff, r_b)  # (C - I) U R for every sample
    gram_d = torch.einsum("sdi,sdj->sij", d, d)
    a = factors.A.double()
    return factors.scale * torch.sqrt(torch.einsum("sij,ij->s", gram_d, a @ a.T).clamp_min(0.0))


@dataclass
class LayerProjection:
    """One module's factors, its projected ``CB = C @ B`` and (optionally) rotation-null
    distances."""

    factors: LoraFactors
    CB: torch.Tensor
    kind: str
    null_distances: torch.Tensor | None = None


@worklog.timed("scoring")
def compute_projections(
    factors: Mapping[str, LoraFactors] | PathLike | torch.nn.Module,
    base: SafetensorsWeights | PathLike,
    chat: SafetensorsWeights | PathLike,
    *,
    projector: str = "approx",
    rtol: float | None = None,
    rank: int | None = None,
    null_samples: int = 0,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, LayerProjection]:
    """Stream V = W_chat - W_base module by module and keep only C @ B (d_out x r) per module.

    ``factors`` is an adapter folder, a live peft model (both read with
    :func:`~safealign_lib.adapters.lora_io.load_lora_factors`) or the factors themselves.
    ``projector`` is ``"approx"`` (released C = V V^T / ||V||_F, O(d^2 r) per module) or
    ``"exact"`` (an SVD of each V: O(d^3), seconds per 4096 x 4096 module). With
    ``null_samples > 0`` the rotation null of SPLoRA's E-DIEM is drawn while V is in memory
    (seeded per module). Peak memory: about two weight matrices, whatever the model size.
    """
    from tqdm.auto import tqdm

    if not isinstance(factors, Mapping):
        factors = load_lora_factors(factors)
    if not factors:
        raise ValueError("No LoRA modules given: the adapter has no lora_A/lora_B weights.")
    base, chat = as_weights(base), as_weights(chat)
    out, buf = {}, None
    with RowWorkers() as workers:
        for i, (name, f) in enumerate(
            tqdm(factors.items(), desc="alignment", disable=not progress, leave=False)
        ):
            if projector == "approx" and not null_samples:
                # only C B is needed: V is never stored, its blocks are formed twice in cache
                c_t, b_t = load_pair(base, chat, name, f.shape)
                c, b = c_t.numpy(), b_t.numpy()
                sq, bt_v = difference_pass(c, b, workers, right=f.B)
                norm = checked_norm(sq, base, chat, name)
                # C B = V (B^T V)^T / ||V||_F
                cb = difference_times(bt_v.T, workers, c=c, b=b) / norm
                null = None
                del c, b, c_t, b_t
            else:
                v, norm, bt_v = read_alignment(
                    base,
                    chat,
                    name,
                    f.shape,
                    out=buf,
                    workers=workers,
                    right=f.B if projector == "approx" else None,
                )
                proj = Projector.from_alignment(v, projector, rtol=rtol, rank=rank, fro_norm=norm)
                null = (
                    rotation_null_distances(proj, f, null_samples, seed + i)
                    if null_samples
                    else None
                )
                cb = (
                    difference_times(bt_v.T, workers, v=v.numpy()) / norm
                    if bt_v is not None
                    else proj.apply(f.B)
                )
                buf = v  # reused by the next module of the same shape
                del proj
            out[name] = LayerProjection(
                factors=f, CB=cb.float(), kind=projector, null_distances=null
            )
    return out


# --- low-rank scores ------------------------------------------------------------------------------


def _stats_batched(
    a: torch.Tensor, b: torch.Tensor, cb: torch.Tensor, scale: torch.Tensor
) -> dict[str, torch.Tensor]:
    """lowrank_stats for stacked modules: a (L, r, d_in), b and cb (L, d_out, r), scale (L,)."""
    a, b, cb = a.double(), b.double(), cb.double()
    g_a = a @ a.transpose(1, 2)  # (L, r, r)
    s2 = scale.double() ** 2
    diff = cb - b

    def pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # s^2 <x^T y, A A^T> per module
        return s2 * ((x.transpose(1, 2) @ y) * g_a).sum(dim=(1, 2))

    ny, nx = pair(b, b).clamp_min(0).sqrt(), pair(cb, cb).clamp_min(0).sqrt()
    inner = pair(cb, b)
    dist = pair(diff, diff).clamp_min(0).sqrt()
    cos = torch.where((nx > 0) & (ny > 0), inner / (nx * ny), torch.full_like(inner, float("nan")))
    return {
        "norm_update": ny,
        "norm_projected": nx,
        "inner": inner,
        "distance": dist,
        "cosine": cos,
    }


def lowrank_stats(
    A: torch.Tensor, B: torch.Tensor, CB: torch.Tensor, scale: float
) -> dict[str, float]:
    """Norms, inner product, distance and cosine of X = s C B A vs Y = s B A from r x r Grams.

    ||Y||^2 = s^2 <B^T B, A A^T>, ||X||^2 = s^2 <(CB)^T CB, A A^T>, <X, Y> = s^2 <(CB)^T B, A A^T>
    and ||X - Y||^2 = s^2 <D^T D, A A^T> with D = CB - B (no cancellation). Cosine is NaN when
    either update is zero (an untrained adapter has B = 0).
    """
    out = _stats_batched(A[None], B[None], CB[None], torch.tensor([float(scale)]))
    return {k: float(v[0]) for k, v in out.items()}


def safelora_scores(projections: Mapping[str, LayerProjection]) -> pd.DataFrame:
    """One row per LoRA module (index: weight name): block, module, r, scale, norms of s B A and
    s C B A, their inner product, distance and cosine (Safe LoRA's similarity)."""
    if not projections:
        raise ValueError("No projections given; run compute_projections first.")
    groups: dict[tuple, list[str]] = {}
    for (
        name,
        p,
    ) in projections.items():  # stack modules of one shape: a few large ops, not many tiny ones
        groups.setdefault((tuple(p.factors.A.shape), tuple(p.factors.B.shape)), []).append(name)
    stats: dict[str, dict[str, float]] = {}
    for names in groups.values():
        fs = [projections[n].factors for n in names]
        out = _stats_batched(
            torch.stack([f.A for f in fs]),
            torch.stack([f.B for f in fs]),
            torch.stack([projections[n].CB for n in names]),
            torch.tensor([f.scale for f in fs]),
        )
        for i, n in enumerate(names):
            stats[n] = {k: float(v[i]) for k, v in out.items()}
    rows = []
    for name, p in projections.items():
        block, module = block_and_module(name)
        rows.append(
            {
                "name": name,
                "block": block,
                "module": module,
                "r": p.factors.r,
                "scale": p.factors.scale,
                **stats[name],
            }
        )
    return pd.DataFrame(rows).set_index("name")


def select_modules(
    scores: pd.Series | Mapping[str, float],
    *,
    k: int | None = None,
    threshold: float | None = None,
    side: str = "low",
) -> list[str]:
    """Names of the modules to act on: exactly ``k`` (number mode) or all past ``threshold``.

    ``side="low"`` picks the lowest scores (``<= threshold``), as Safe LoRA does with cosine;
    ``side="high"`` the highest (``>= threshold``). Ties in number mode are broken by order.
    """
    s = pd.Series(scores, dtype=float)
    if (k is None) == (threshold is None):
        raise ValueError(
            "Choose the modules either by number (k=...) or by threshold (threshold=...), "
            "not both and not neither."
        )
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}.")
    if s.isna().any():
        bad = list(s.index[s.isna()])[:3]
        raise ValueError(
            f"Scores are NaN for {bad}...: an update is zero (untrained adapter?) or "
            "undefined; drop those modules before choosing."
        )
    if k is not None:
        if int(k) != k or not 0 <= k <= len(s):
            raise ValueError(
                f"k must be an integer in [0, {len(s)}] (the number of LoRA modules), got {k}."
            )
        order = s.sort_values(ascending=(side == "low"), kind="stable")
        return list(order.index[: int(k)])
    chosen = s <= threshold if side == "low" else s >= threshold
    return list(s.index[chosen])


def safelora_project(
    target: torch.nn.Module | dict[str, torch.Tensor],
    projections: Mapping[str, LayerProjection],
    names: Iterable[str],
    adapter_name: str = "default",
) -> torch.nn.Module | dict[str, torch.Tensor]:
    """Set lora_B <- C @ lora_B for the modules ``names``.

    ``target`` is a live peft model (changed in place and returned) or an adapter state dict
    (a new dict is returned; save it with :func:`write_adapter`). ``C @ lora_B`` is the one
    stored by :func:`compute_projections`, so projecting twice does not compound.
    """
    names = list(names)
    missing = [n for n in names if n not in projections]
    if missing:
        raise KeyError(
            f"No projection computed for {missing[:3]}; pass them to compute_projections."
        )
    if isinstance(target, torch.nn.Module):
        modules = lora_modules(target, adapter_name)
        with torch.no_grad():
            for n in names:
                mod = n.removesuffix(".weight")
                if mod not in modules:
                    raise KeyError(f"{mod} is not a LoRA module of this model (or was pruned).")
                w = modules[mod].lora_B[adapter_name].weight
                cb = projections[n].CB
                if cb.shape != w.shape:
                    raise ValueError(
                        f"{n}: projection has shape {tuple(cb.shape)} "
                        f"but lora_B has {tuple(w.shape)}."
                    )
                w.copy_(cb.to(w.dtype))
        return target
    out = dict(target)
    for n in names:
        key = lora_state_key(out, n, "B", adapter_name)
        cb = projections[n].CB
        if cb.shape != out[key].shape:
            raise ValueError(
                f"{n}: projection has shape {tuple(cb.shape)} "
                f"but lora_B has {tuple(out[key].shape)}."
            )
        out[key] = cb.to(out[key].dtype)
    return out


def project_adapter_dir(
    adapter_dir: PathLike,
    projections: Mapping[str, LayerProjection],
    names: Iterable[str],
    out_dir: PathLike,
) -> Path:
    """Read an adapter folder, project ``names`` (lora_B <- C lora_B) and save it to ``out_dir``
    (never the input folder: the trained adapter is kept)."""
    check_new_output(out_dir, adapter_dir)
    config, state = read_adapter(adapter_dir)
    return write_adapter(out_dir, config, safelora_project(state, projections, names))
