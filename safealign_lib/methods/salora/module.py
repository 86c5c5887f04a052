"""SaLoRA's fixed safety module: the top-r_s output subspace of each module on the safety
features (randomized SVD), the projector C = I − U Uᵀ, and the spectra that choose r_s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from safealign_lib.methods.salora.config import NITER
from safealign_lib.methods.salora.features import LayerFeatures, _feature_linears
from safealign_lib.methods.salora.layer import SafetyProjectedLinear, _project

# --- subspaces ---------------------------------------------------------------------------------


def _randomized_svd(
    matmul: Callable[[Tensor], Tensor],
    rmatmul: Callable[[Tensor], Tensor],
    n_cols: int,
    q: int,
    niter: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Randomized SVD of a matrix M given only M @ Z and Mᵀ @ Z (Halko et al. 2009, Alg. 4.4;
    the algorithm of ``torch.svd_lowrank``), so that M = W·X itself is never formed.

    Returns U (n_rows, q), S (q,), Vh (q, n_cols) with M ≈ U diag(S) Vh.
    """
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(n_cols, q, generator=gen, dtype=dtype).to(device)
    Q = torch.linalg.qr(matmul(omega)).Q
    for _ in range(niter):
        Q = torch.linalg.qr(rmatmul(Q)).Q
        Q = torch.linalg.qr(matmul(Q)).Q
    Ub, S, Vh = torch.linalg.svd(rmatmul(Q).mT, full_matrices=False)  # Qᵀ M = Ub S Vh
    return Q @ Ub, S, Vh


def _check_rank(name: str, what: str, k: int, S: Tensor, dims: tuple[int, int]) -> None:
    # numpy's matrix_rank tolerance at float32 precision
    tol = S[0] * max(dims) * torch.finfo(torch.float32).eps
    numerical = int((S > tol).sum()) if S[0] > 0 else 0
    if numerical < k:
        raise ValueError(
            f"{what}={k} but W·X of layer {name!r} has numerical rank {numerical}; lower {what} "
            "or collect more varied samples."
        )


def layer_output_subspace(
    weight: Tensor,
    feats: LayerFeatures,
    r: int,
    *,
    what: str = "r",
    niter: int = NITER,
    seed: int = 0,
    oversample: int = 10,
) -> tuple[Tensor, Tensor]:
    """Top-``r`` left singular vectors U (d_out, r) and singular values of W·X for one layer.

    W·X is never formed: from feature rows the randomized SVD runs on the operator
    Z -> W (Xᵀ Z); from a Gram K = (W X)(W X)ᵀ it runs on K, whose eigenvectors are the same
    vectors (singular values = sqrt of K's). Uses ``r + oversample`` columns and ``niter``
    subspace iterations from a fixed ``seed``.
    """
    feats.check()
    d_out, d_in = weight.shape
    if (feats.d_out, feats.d_in) != (d_out, d_in):
        raise ValueError(
            f"Features of layer {feats.name!r} are for a {feats.d_out}x{feats.d_in} layer, "
            f"the weight is {d_out}x{d_in}."
        )
    limits = {"d_out": d_out, "d_in": d_in, "response tokens": feats.n_tokens}
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"{what} must be a positive whole number of directions, got {r!r}.")
    if r > min(limits.values()):
        detail = ", ".join(f"{k}={v}" for k, v in limits.items())
        raise ValueError(
            f"{what}={r} is larger than the rank W·X can have in layer {feats.name!r}: "
            f"min({detail}) = {min(limits.values())}. Lower {what} or collect more samples."
        )
    device = weight.device
    if feats.x is not None:
        W = weight.detach().float()
        X = feats.x.to(device)
        q = min(r + oversample, d_out, feats.n_tokens)
        U, S, _ = _randomized_svd(
            lambda Z: W @ (X.T @ Z),
            lambda Q: X @ (W.T @ Q),
            feats.n_tokens,
            q,
            niter,
            seed,
            torch.float32,
            device,
        )
    else:
        K = feats.gram.to(device)
        q = min(r + oversample, d_out)
        U, S, _ = _randomized_svd(
            lambda Z: K @ Z, lambda Z: K @ Z, d_out, q, niter, seed, torch.float64, device
        )
        S = S.clamp_min(0).sqrt()
    _check_rank(feats.name, what, r, S, (d_out, d_in))
    U = torch.linalg.qr(
        U[:, :r].double()
    ).Q.float()  # exactly orthonormal columns: U_Cᵀ C = 0 needs it
    return U, S[:r].float()


@dataclass
class SafetyLayer:
    """The safety subspace of one layer: ``U`` = U_C (d_out, r_s) with orthonormal columns,
    ``UtW`` = U_Cᵀ W (r_s, d_in) and ``Utb`` = U_Cᵀ b of the original layer (what its
    safety-subspace output must stay), and the top singular values ``sigma`` of W·X_h."""

    U: Tensor
    UtW: Tensor
    sigma: Tensor
    Utb: Tensor | None = None


@dataclass
class SafetyModule:
    """The fixed safety modules C = I - U_C U_Cᵀ of all target layers, held as U_C only."""

    r_s: int
    layers: dict[str, SafetyLayer] = field(default_factory=dict)

    def update(self, other: SafetyModule) -> SafetyModule:
        """Add the layers of ``other`` (built from another group of decoder layers)."""
        if other.r_s != self.r_s:
            raise ValueError(
                f"Cannot merge safety modules with r_s={self.r_s} and r_s={other.r_s}."
            )
        self.layers.update(other.layers)
        return self

    def project(self, name: str, y: Tensor, sign: str = "correct") -> Tensor:
        """C·y along the last axis, as y - U_C (U_Cᵀ y) (or U_C U_Cᵀ y for ``sign="wrong"``)."""
        return _project(y, self.layers[name].U.to(y.device), sign)


def build_safety_module(
    model: nn.Module,
    safety_feats: Mapping[str, LayerFeatures],
    r_s: int = 32,
    *,
    niter: int = NITER,
    seed: int = 0,
    oversample: int = 10,
) -> SafetyModule:
    """U_C = top-``r_s`` left singular vectors of W·X_h for every layer in ``safety_feats``.

    ``model`` must be the original model (its W define the subspace); ``safety_feats`` come
    from :func:`collect_layer_inputs` on harmful prompts + refusals.
    """
    if not safety_feats:
        raise ValueError(
            "No safety features: collect them with collect_layer_inputs on harmful "
            "prompts paired with refusals."
        )
    if any(isinstance(m, SafetyProjectedLinear) for m in model.modules()):
        raise ValueError(
            "This model already carries SaLoRA (its weights are W_res); build the safety "
            "module on the original model, before apply_salora."
        )
    module = SafetyModule(r_s=r_s)
    for i, (name, lin) in enumerate(_feature_linears(model, safety_feats).items()):
        U, sigma = layer_output_subspace(
            lin.weight,
            safety_feats[name],
            r_s,
            what="r_s",
            niter=niter,
            seed=seed + i,
            oversample=oversample,
        )
        with torch.no_grad():
            UtW = U.T @ lin.weight.float()
            Utb = U.T @ lin.bias.float() if lin.bias is not None else None
        module.layers[name] = SafetyLayer(U=U, UtW=UtW, sigma=sigma, Utb=Utb)
    return module


# --- looking at the subspaces: spectra, the choice of r_s, what C removes -----------------------


def output_spectrum(weight: Tensor, feats: LayerFeatures) -> Tensor:
    """All singular values of W·X for one layer, exact and descending (on the CPU).

    The library's subspaces use the paper's randomized SVD, which agrees on the top of this
    spectrum. Needs ``store="features"``.
    """
    if feats.x is None:
        raise ValueError(f"The spectrum of layer {feats.name!r} needs store='features'.")
    W = weight.detach().float()
    return torch.linalg.svdvals(W @ feats.x.to(W.device).T).cpu()


def output_spectra(model: nn.Module, feats: Mapping[str, LayerFeatures]) -> dict[str, Tensor]:
    """:func:`output_spectrum` of every layer in ``feats``, with ``model``'s (original) weights."""
    return {
        n: output_spectrum(lin.weight, feats[n])
        for n, lin in _feature_linears(model, feats).items()
    }


def cumulative_energy(S: Tensor) -> Tensor:
    """Share of Σσ² held by the top 1, 2, ... singular values."""
    return (S**2).cumsum(0) / (S**2).sum()


def energy_rank(S: Tensor, energy: float) -> int:
    """The smallest k whose top-k singular values in ``S`` hold ``energy`` of Σσ²."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}.")
    # float rounding can leave the total a hair under 1.0: never beyond len(S)
    return min(int((cumulative_energy(S) < energy).sum()) + 1, len(S))


def rank_for_energy(spectra: Mapping[str, Tensor], energy: float) -> int:
    """r_s keeping ``energy`` of ‖W·X_h‖² in **every** layer: the largest :func:`energy_rank`."""
    if not spectra:
        raise ValueError("No spectra given.")
    return max(energy_rank(S, energy) for S in spectra.values())


def rank_limit(feats: Mapping[str, LayerFeatures]) -> int:
    """The largest rank W·X can have in every layer: min over layers of (d_out, d_in, tokens)."""
    if not feats:
        raise ValueError("No features given.")
    return min(min(f.d_out, f.d_in, f.n_tokens) for f in feats.values())


def output_share(U: Tensor, weight: Tensor, x: Tensor) -> float:
    """Share of ‖W·Xᵀ‖²_F inside span(U) (U with orthonormal columns; ``x`` one row per
    token): how much of a layer's outputs on X the safety module C = I - U Uᵀ removes from
    the update's reach. A random r-dimensional U holds r/d_out on average."""
    W = weight.detach().float()
    WX = W @ x.to(W.device).T
    return float((U.to(W.device).T @ WX).pow(2).sum() / WX.pow(2).sum())


def output_shares(
    model: nn.Module, safety: SafetyModule, feats: Mapping[str, LayerFeatures]
) -> dict[str, float]:
    """:func:`output_share` of U_C in every layer of ``feats`` (``store="features"``)."""
    out = {}
    for name, lin in _feature_linears(model, feats).items():
        if feats[name].x is None:
            raise ValueError(f"The share of layer {name!r} needs store='features'.")
        out[name] = output_share(safety.layers[name].U, lin.weight, feats[name].x)
    return out
