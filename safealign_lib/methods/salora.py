"""SaLoRA: LoRA whose update cannot move the safety-relevant part of each layer's output.

Li et al. (ICLR 2025), as in the released code (course notes: ``docs/methods.md``, section 4).
Shapes follow PEFT: a target layer holds W (d_out, d_in), lora_A (r, d_in), lora_B (d_out, r),
and the LoRA update is s·B·A with s = alpha / r.

Per target linear layer:

1. X_h: the layer's inputs at the response tokens (labels != -100) of harmful-prompt + refusal
   pairs (:func:`collect_layer_inputs`).
2. U_C: the top-r_s left singular vectors of W·X_h, not centred, by a seeded randomized SVD
   with 30 subspace iterations (:func:`build_safety_module`).
3. The fixed safety module C = I - U_C U_Cᵀ, stored as U_C only and applied as
   ``y - U_C (U_Cᵀ y)``: no dense d_out x d_out matrix is ever formed.
4. Forward: y = W_res·x + s·C·B·A·x, only A and B train (:func:`apply_salora`).
5. Task-specific initialisation (PiSSA-like): U_T = top-r_t left singular vectors of W·X_t,
   W ≈ Ū S̄ V̄ᵀ (top r), B₀ = U_T U_Tᵀ Ū S̄^½, A₀ = S̄^½ V̄ᵀ, W_res = W - s·C·B₀·A₀, so the
   model starts exactly where it was.

The guarantee (:func:`invariance_error` measures it): U_Cᵀ C = U_Cᵀ - U_Cᵀ U_C U_Cᵀ = 0, hence
U_Cᵀ y = U_Cᵀ W_res x + s·U_Cᵀ C B A x = U_Cᵀ W x - s·U_Cᵀ C B₀ A₀ x + 0 = U_Cᵀ W x for every
x, whatever A and B have become. It holds per layer only: the inputs of deeper layers change
once earlier layers change (:func:`feature_drift` measures that limit).

How C enters peft: each ``lora_B[adapter]`` is swapped for :class:`SafetyProjectedLinear`, an
``nn.Linear`` that shares B's parameter and computes z -> (C·B) z. That equals applying C to
lora_B's output (C·(B z) = (C·B) z) at no per-token cost, and keeps peft's parameter names.
peft's own ``merge_adapter`` / ``merge_and_unload`` / ``save_pretrained`` do not know about C
or W_res: use :func:`export_merged` and :func:`export_adapter`.

Memory of feature collection (``store``): ``"features"`` keeps the inputs X (n_tokens x d_in,
fp32, CPU) of every target layer, exact and what the paper does (a 7B layer at 128 samples x
256 tokens: 0.5 GB); ``"gram"`` keeps only K = Σ (W x)(W x)ᵀ (d_out x d_out, fp64: 128 MB at
d = 4096), whose eigenvectors are the same left singular vectors, independent of the number
of tokens. Either way ``layers=`` collects one group of decoder layers at a time; merge the
per-group modules with :meth:`SafetyModule.update`.

Looking inside: :func:`output_spectra` (the spectrum of W·X_h), :func:`energy_rank` and
:func:`rank_for_energy` (r_s keeping a share of the energy), :func:`output_shares` (how much of
a layer's outputs lies in U_C). :func:`train_salora` builds and trains a SaLoRA model exactly
like a plain LoRA run; :func:`export_errors` checks both exports against the trained model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.adapters import finetune
from safealign_lib.adapters.hooks import forward_hooks
from safealign_lib.adapters.lora_io import PEFT_PREFIX
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    encode_prompts,
    format_prompt,
    padding_id,
    tokenize_example,
)
from safealign_lib.models.loading import decoder_layers, load_model

STORES = ("features", "gram")
INITS = ("task", "standard")
SIGNS = ("correct", "wrong")
NITER = 30  # subspace iterations of the randomized SVD, as in the SaLoRA code


# --- finding the target layers ----------------------------------------------------------------


def _canonical(name: str) -> str:
    """A layer's name in the plain HF model, also when ``name`` comes from a peft wrapper."""
    return name.removeprefix(PEFT_PREFIX).removesuffix(".base_layer")


def _target_linears(
    model: nn.Module, target_modules: Sequence[str], layers: Iterable[int] | None = None
) -> dict[str, nn.Linear]:
    """The nn.Linear layers whose last name component is in ``target_modules``, keyed by their
    name in the plain model (inside a peft model: the wrapped ``base_layer``)."""
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(
            f"target_modules must be a non-empty list of names such as ['q_proj', 'v_proj'], "
            f"got {target_modules!r}."
        )
    allowed, idx = None, None
    if layers is not None:
        blocks = decoder_layers(model)
        idx = list(layers)
        bad = [i for i in idx if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(
                f"Decoder layer index(es) {bad} out of range: the model has {len(blocks)} layers."
            )
        allowed = {id(m) for i in idx for m in blocks[i].modules()}
    found: dict[str, nn.Linear] = {}
    available = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or ".lora_" in name:
            continue
        cname = _canonical(name)
        leaf = cname.rsplit(".", 1)[-1]
        available.add(leaf)
        if leaf in target_modules and (allowed is None or id(mod) in allowed):
            found[cname] = mod
    missing = [t for t in target_modules if t not in available]
    if missing:
        raise ValueError(
            f"Target module(s) {missing} not found in {type(model).__name__}; "
            f"linear layers available: {sorted(available)}."
        )
    if not found:
        raise ValueError(f"No {list(target_modules)} layers in decoder layers {idx}.")
    return found


def _feature_linears(model: nn.Module, feats: Mapping[str, LayerFeatures]) -> dict[str, nn.Linear]:
    """The nn.Linear of every layer in ``feats`` (collected from ``model``), in their order."""
    linears = _target_linears(model, sorted({n.rsplit(".", 1)[-1] for n in feats}))
    for name in feats:
        if name not in linears:
            raise ValueError(f"Layer {name!r} of the features is not in {type(model).__name__}.")
    return {n: linears[n] for n in feats}


def _outer_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """For each canonical layer name, the module whose output is the layer's full output
    (peft's LoRA wrapper when there is one, else the nn.Linear itself)."""
    wanted = set(names)
    out = {}
    for name, mod in model.named_modules():
        if not name.endswith(".base_layer") and _canonical(name) in wanted:
            out[_canonical(name)] = mod
    missing = wanted - set(out)
    if missing:
        raise ValueError(
            f"Layers {sorted(missing)} not found in {type(model).__name__}; was the safety "
            "module built for another model?"
        )
    return out


# --- feature collection ------------------------------------------------------------------------


@dataclass
class LayerFeatures:
    """What :func:`collect_layer_inputs` keeps for one target layer at the response tokens.

    ``store="features"``: ``x`` (n_tokens, d_in), float32 on CPU, one row per response token
    (the matrix X of the paper is ``x.T``). ``store="gram"``: ``gram`` (d_out, d_out), float64,
    Σ (W x)(W x)ᵀ with W the layer's weight at collection time.
    """

    name: str
    n_tokens: int
    d_in: int
    d_out: int
    x: Tensor | None = None
    gram: Tensor | None = None

    @property
    def store(self) -> str:
        return "features" if self.x is not None else "gram"

    def check(self) -> None:
        """Raise on missing, misshapen or non-finite features."""
        data = self.x if self.x is not None else self.gram
        if data is None:
            raise ValueError(f"LayerFeatures {self.name!r} hold neither `x` nor `gram`.")
        if self.n_tokens < 1:
            raise ValueError(
                f"No response tokens were collected for layer {self.name!r}; the examples "
                "need non-empty responses."
            )
        expected = (self.n_tokens, self.d_in) if self.x is not None else (self.d_out, self.d_out)
        if tuple(data.shape) != expected:
            raise ValueError(
                f"Features of layer {self.name!r} have shape {tuple(data.shape)}, "
                f"expected {expected}."
            )
        # row chunks: a whole-matrix isfinite would allocate n_tokens x d_in bools (134 MB at 7B)
        rows = max(1, 2**20 // max(1, data.shape[1]))
        if not all(bool(torch.isfinite(chunk).all()) for chunk in data.split(rows)):
            raise FloatingPointError(
                f"NaN/inf in the features of layer {self.name!r}: the model produced "
                "non-finite activations (check its weights, or run it in float32 "
                "instead of float16)."
            )


def _feature_mask(labels: Tensor, prompt_positions: int) -> Tensor:
    """The response tokens (labels ≠ −100), widened by the last ``prompt_positions`` prompt
    positions of each row (the ones right before its first response token)."""
    mask = labels != IGNORE_INDEX
    if prompt_positions:
        first = mask.int().argmax(dim=1, keepdim=True)  # first response position per row
        pos = torch.arange(labels.shape[1]).unsqueeze(0)
        mask = mask | ((pos < first) & (pos >= first - prompt_positions))
    return mask


@worklog.timed("activations")
def collect_layer_inputs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    target_modules: Sequence[str],
    *,
    store: str = "features",
    layers: Iterable[int] | None = None,
    n_samples: int | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    prompt_positions: int = 0,
) -> dict[str, LayerFeatures]:
    """Inputs of every target linear layer at the response tokens of ``examples``.

    ``prompt_positions`` > 0 also keeps the last that many prompt positions of each example
    (an ablation: the paper's X_h leaves them out, although the last one is where the first
    answer token, refusal or compliance, is decided).

    Streams ``batch_size`` examples at a time through forward pre-hooks on the target
    ``nn.Linear`` modules (removed afterwards, also on error) and keeps per layer either the
    feature rows (``store="features"``) or only the Gram of W·X (``store="gram"``; see the
    module docstring). ``layers`` restricts collection to some decoder layers (one group at a
    time); ``n_samples`` uses the first n examples. Returns ``{layer name: LayerFeatures}``.
    """
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}.")
    examples = list(examples)
    if not examples:
        raise ValueError(
            "No examples given: the safety (or task) set is empty. Pass ChatExamples with "
            "responses, e.g. harmful prompts paired with refusals."
        )
    if n_samples is not None:
        if not 1 <= n_samples <= len(examples):
            raise ValueError(
                f"n_samples={n_samples} but {len(examples)} examples are available; "
                f"choose 1 <= n_samples <= {len(examples)}."
            )
        examples = examples[:n_samples]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if prompt_positions < 0:
        raise ValueError(f"prompt_positions must be >= 0, got {prompt_positions}.")
    linears = _target_linears(model, target_modules, layers)
    tokenized = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    pad_id = padding_id(tokenizer)
    device = next(model.parameters()).device

    rows: dict[str, list[Tensor]] = {n: [] for n in linears}
    grams: dict[str, Tensor] = {}
    counts = dict.fromkeys(linears, 0)
    current: dict[str, Tensor] = {}  # the response-token mask of the batch being run

    def make_hook(name: str) -> Callable:
        def hook(mod: nn.Linear, args: tuple) -> None:
            x = args[0][current["mask"]]  # (n_response_tokens, d_in)
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    f"NaN/inf in the inputs of layer {name!r}: the model produced "
                    "non-finite activations (check its weights, or run it in float32)."
                )
            counts[name] += x.shape[0]
            if store == "features":
                rows[name].append(x.detach().float().cpu())
            else:
                z = F.linear(x, mod.weight).double()
                grams[name] = grams[name] + z.T @ z if name in grams else z.T @ z

        return hook

    was_training = model.training
    model.eval()
    handles = [lin.register_forward_pre_hook(make_hook(n)) for n, lin in linears.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(tokenized), batch_size):
                batch = collate(tokenized[i : i + batch_size], pad_id)
                current["mask"] = _feature_mask(batch["labels"], prompt_positions).to(device)
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    out = {}
    for name, lin in linears.items():
        d_out, d_in = lin.weight.shape
        if store == "features":
            x = torch.cat(rows.pop(name)) if rows[name] else torch.zeros(0, d_in)
            out[name] = LayerFeatures(name, counts[name], d_in, d_out, x=x)
        else:
            gram = (
                grams.pop(name).cpu()
                if name in grams
                else torch.zeros(d_out, d_out, dtype=torch.float64)
            )
            out[name] = LayerFeatures(name, counts[name], d_in, d_out, gram=gram)
    return out


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


def _project(y: Tensor, U: Tensor, sign: str) -> Tensor:
    """Apply C to the last axis of ``y`` without forming C (``y`` rows are output vectors)."""
    inside = (y @ U.to(y.dtype)) @ U.to(y.dtype).T
    return y - inside if sign == "correct" else inside


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


# --- the SaLoRA adapter ------------------------------------------------------------------------


class SafetyProjectedLinear(nn.Linear):
    """peft's ``lora_B`` with the frozen safety module C in front: z -> (C·B) z.

    Shares the trainable parameter B with the ``lora_B`` it replaces (so peft's names, the
    optimizer and saving see plain B) and holds U_C as a non-persistent buffer. ``sign="wrong"``
    is the ablation C = U_C U_Cᵀ; see :func:`apply_salora`.
    """

    def __init__(self, lora_B: nn.Linear, U: Tensor, sign: str = "correct"):
        if sign not in SIGNS:
            raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}.")
        if lora_B.bias is not None:
            raise ValueError(
                "SaLoRA does not support LoRA biases (lora_bias=True); use bias-free adapters."
            )
        super().__init__(lora_B.in_features, lora_B.out_features, bias=False, device="meta")
        self.weight = lora_B.weight
        self.sign = sign
        # fp32 even for half-precision models: U_Cᵀ C = 0 only holds as exactly as U is stored
        self.register_buffer("U", U.detach().float().to(lora_B.weight.device), persistent=False)

    def effective_weight(self) -> Tensor:
        """C·B (d_out, r): the B that a plain LoRA adapter needs to reproduce this layer."""
        return _project(self.weight.float().T, self.U, self.sign).T.to(self.weight.dtype)

    def forward(self, z: Tensor) -> Tensor:
        return F.linear(z, self.effective_weight().to(z.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_s={self.U.shape[1]}, sign={self.sign!r}"


def _lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    return {_canonical(n): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def apply_salora(
    model: PreTrainedModel,
    lora: LoraSettings,
    safety: SafetyModule,
    *,
    task_feats: Mapping[str, LayerFeatures] | None = None,
    r_t: int = 32,
    init: str = "task",
    sign: str = "correct",
    seed: int = 0,
    niter: int = NITER,
) -> PeftModel:
    """Wrap ``model`` (in place) with SaLoRA adapters: y = W_res x + s·C·B·A·x, only A, B train.

    ``init="task"`` (SaLoRA's): B₀ = U_T U_Tᵀ Ū S̄^½, A₀ = S̄^½ V̄ᵀ from the top-``lora.r`` SVD
    of W and the top-``r_t`` output subspace U_T of W·X_t (``task_feats``), and
    W_res = W - s·C·B₀·A₀. ``init="standard"``: peft's LoRA init (A random with ``seed``,
    B = 0) and W_res = W. Either way the outputs before training equal the original model's.

    ``sign="wrong"`` is for the ablation only: the first public SaLoRA commit used C = U_C U_Cᵀ.
    That projects the update *onto* the safety subspace instead of removing it, so training
    can change exactly the outputs the method means to protect (U_Cᵀ C = U_Cᵀ, not 0) and
    nothing else. The right module is C = I - U_C U_Cᵀ (``sign="correct"``).

    Train the result with :func:`safealign_lib.adapters.finetune.train`; export with
    :func:`export_merged` or :func:`export_adapter`.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}.")
    if isinstance(model, PeftModel) or _lora_layers(model):
        raise ValueError("The model already has LoRA adapters; apply SaLoRA to the plain model.")
    config = lora.to_peft()
    linears = _target_linears(model, lora.target_modules)
    missing = [n for n in linears if n not in safety.layers]
    if missing:
        raise ValueError(
            f"The safety module has no subspace for {len(missing)} target layer(s), e.g. "
            f"{missing[0]!r}; build it from features of the same target_modules "
            f"{list(lora.target_modules)}."
        )
    if init == "task" and not task_feats:
        raise ValueError(
            "init='task' needs task_feats (collect_layer_inputs on task samples); "
            "or use init='standard'."
        )
    s = lora.scale

    # everything that can fail runs before the model is touched
    plan: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for i, (name, lin) in enumerate(linears.items()):
        U_C = safety.layers[name].U
        d_out, d_in = lin.weight.shape
        if U_C.shape[0] != d_out:
            raise ValueError(
                f"Safety subspace of {name!r} has {U_C.shape[0]} rows, the layer outputs {d_out}."
            )
        if init == "standard":
            continue
        if name not in task_feats:
            raise ValueError(
                f"task_feats has no features for layer {name!r}; collect them with the same "
                f"target_modules {list(lora.target_modules)}."
            )
        if not 1 <= lora.r <= min(d_out, d_in):
            raise ValueError(
                f"LoRA rank r={lora.r} exceeds the rank of layer {name!r} ({min(d_out, d_in)})."
            )
        U_T, _ = layer_output_subspace(
            lin.weight, task_feats[name], r_t, what="r_t", niter=niter, seed=seed + i
        )
        W = lin.weight.detach().double()
        Ub, Sb, Vh = _randomized_svd(
            lambda Z, W=W: W @ Z,
            lambda Z, W=W: W.T @ Z,
            d_in,
            min(lora.r + 10, d_out, d_in),
            niter,
            seed + i,
            torch.float64,
            W.device,
        )
        root = Sb[: lora.r].sqrt()
        U_T = U_T.double().to(W.device)
        B0 = U_T @ (U_T.T @ (Ub[:, : lora.r] * root))  # (d_out, r)
        A0 = root[:, None] * Vh[: lora.r]  # (r, d_in)
        CB0 = _project(B0.T, U_C.double().to(W.device), sign).T
        plan[name] = (
            B0,
            A0,
            CB0,
        )  # low-rank pieces only: W_res is formed one layer at a time below

    torch.manual_seed(seed)  # peft's random A for init="standard", as add_lora does
    peft_model = get_peft_model(model, config)
    adapter = peft_model.active_adapter
    for name, layer in _lora_layers(peft_model).items():
        if abs(layer.scaling[adapter] - s) > 1e-12:
            raise ValueError(
                f"peft scales layer {name!r} by {layer.scaling[adapter]}, expected alpha/r = {s}."
            )
        if name in plan:
            B0, A0, CB0 = plan.pop(name)
            with torch.no_grad():
                base = layer.get_base_layer().weight
                layer.lora_A[adapter].weight.copy_(A0)
                layer.lora_B[adapter].weight.copy_(B0)
                base.copy_(base.double() - s * CB0 @ A0)  # W_res = W - s·C·B₀·A₀, in fp64
        layer.lora_B[adapter] = SafetyProjectedLinear(
            layer.lora_B[adapter], safety.layers[name].U, sign
        )
    return peft_model


def train_salora(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    lora: LoraSettings,
    safety: SafetyModule,
    examples: Sequence[ChatExample],
    settings: TrainSettings,
    *,
    seed: int = 0,
    task_feats: Mapping[str, LayerFeatures] | None = None,
    r_t: int = 32,
    init: str = "task",
    sign: str = "correct",
    desc: str = "SaLoRA",
) -> tuple[PeftModel, finetune.TrainResult]:
    """Wrap a fresh plain ``model`` with SaLoRA (:func:`apply_salora`) and train it on
    ``examples`` with :func:`safealign_lib.adapters.finetune.train` under ``settings`` with
    ``seed``: the same loop, settings and seed as a plain LoRA run, so that the two compare.

    Returns the trained PeftModel and the run's ``TrainResult`` (losses, seconds, counts).
    """
    peft_model = apply_salora(
        model, lora, safety, task_feats=task_feats, r_t=r_t, init=init, sign=sign, seed=seed
    )
    result = finetune.train(
        peft_model, tokenizer, examples, replace(settings, seed=seed), desc=desc
    )
    return peft_model, result


# --- measuring the guarantee and its limit ------------------------------------------------------


def _encode(
    tokenizer: PreTrainedTokenizerBase, ex: ChatExample | str, max_length: int
) -> dict[str, list[int]]:
    if isinstance(ex, ChatExample) and ex.response is not None:
        return tokenize_example(tokenizer, ex, max_length)
    ids = tokenizer(format_prompt(tokenizer, ex), add_special_tokens=False)["input_ids"][
        :max_length
    ]
    return {"input_ids": ids, "labels": ids}


def invariance_error(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample | str],
    safety: SafetyModule,
    *,
    batch_size: int = 8,
    max_length: int = 256,
) -> dict[str, float]:
    """Per target layer, max |U_Cᵀ (y(x) - W x - b)| over every token of ``examples``.

    y(x) is the layer's current output (with its adapter), W and b the original layer's.
    SaLoRA keeps it at float rounding (≤ 1e-4) at every step; plain LoRA or the wrong sign do
    not. The notebook's ``invariance_max_abs_err`` is ``max(result.values())``.
    """
    if not examples:
        raise ValueError("No examples to measure the invariance on.")
    mods = _outer_modules(model, safety.layers)
    worst = dict.fromkeys(mods, 0.0)

    def make_hook(name: str) -> Callable:
        layer = safety.layers[name]

        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            x, y = args[0].float(), out.float()
            U, UtW = layer.U.to(y.device), layer.UtW.to(y.device)
            expected = x @ UtW.T + (layer.Utb.to(y.device) if layer.Utb is not None else 0)
            worst[name] = max(worst[name], float((y @ U - expected).abs().max()))

        return hook

    pad_id = padding_id(tokenizer)
    device = next(model.parameters()).device
    feats = [_encode(tokenizer, ex, max_length) for ex in examples]
    was_training = model.training
    model.eval()
    try:
        with forward_hooks([(m, make_hook(n)) for n, m in mods.items()]), torch.no_grad():
            for i in range(0, len(feats), batch_size):
                batch = collate(feats[i : i + batch_size], pad_id)
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                )
    finally:
        model.train(was_training)
    return worst


def feature_drift(
    before: Mapping[str, LayerFeatures], after: Mapping[str, LayerFeatures]
) -> dict[str, float]:
    """Per layer, ‖X_after - X_before‖_F / ‖X_before‖_F: how far each target layer's inputs moved.

    Collect both with ``store="features"`` on the same examples, ``before`` on the original
    model and ``after`` on the trained one. SaLoRA fixes each layer's safety-subspace output
    for a given input, but once earlier layers change, deeper layers get different inputs.
    """
    out = {}
    for name, b in before.items():
        if name not in after:
            raise ValueError(
                f"Layer {name!r} is missing from `after`; "
                "collect both with the same target_modules."
            )
        a = after[name]
        if a.x is None or b.x is None:
            raise ValueError("feature_drift needs store='features' on both sides.")
        if a.x.shape != b.x.shape:
            raise ValueError(
                f"Layer {name!r}: {tuple(b.x.shape)} rows before, {tuple(a.x.shape)} after; "
                "collect both on the same examples with the same tokenizer and max_length."
            )
        out[name] = float(torch.linalg.norm(a.x - b.x) / torch.linalg.norm(b.x).clamp_min(1e-30))
    return out


# --- export ------------------------------------------------------------------------------------


def _salora_parts(model: PeftModel) -> dict[str, tuple[LoraLayer, Tensor, Tensor, float]]:
    """Per LoRA layer: (layer, A, B_eff = C·B, s) of the active adapter."""
    if not isinstance(model, PeftModel):
        raise ValueError("Expected the PeftModel returned by apply_salora.")
    adapter = model.active_adapter
    parts = {}
    for name, layer in _lora_layers(model).items():
        if layer.merged:
            raise ValueError(
                "The adapter is merged into the base weights (peft's merge_adapter, which ignores "
                "C); call model.unmerge_adapter() first."
            )
        B = layer.lora_B[adapter]
        B_eff = B.effective_weight() if isinstance(B, SafetyProjectedLinear) else B.weight
        parts[name] = (
            layer,
            layer.lora_A[adapter].weight.detach(),
            B_eff.detach(),
            layer.scaling[adapter],
        )
    return parts


def _plain_state_dict(model: PeftModel, merged: bool) -> dict[str, Tensor]:
    """The base model's state dict under plain HF names (no peft wrapper keys); with ``merged``
    the target weights are W_res + s·C·B·A, else W_res."""
    parts = _salora_parts(model)
    sd = {}
    for key, val in model.get_base_model().state_dict().items():
        if ".lora_" in key:
            continue
        sd[key.replace(".base_layer.", ".")] = val
    if merged:
        with torch.no_grad():
            for name, (layer, A, B_eff, s) in parts.items():
                W = layer.get_base_layer().weight
                sd[f"{name}.weight"] = (W.double() + s * B_eff.double() @ A.double()).to(W.dtype)
    return sd


def _save_plain(
    model: PeftModel, out: Path, merged: bool, tokenizer: PreTrainedTokenizerBase | None
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.get_base_model().save_pretrained(
        str(out), state_dict=_plain_state_dict(model, merged), safe_serialization=True
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def export_merged(
    model: PeftModel, out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Save dense weights W_res + s·C·B·A as a standard HF folder (safetensors) that loads with
    plain ``AutoModelForCausalLM.from_pretrained``. The training model is left unchanged."""
    return _save_plain(model, Path(out_dir), merged=True, tokenizer=tokenizer)


def export_adapter(
    model: PeftModel, out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[Path, Path]:
    """Save ``out_dir/residual_model`` (the W_res model, HF folder) and ``out_dir/adapter``
    (a plain peft LoRA adapter with C folded in: B' = C·B).

    The adapter is only correct on top of the residual model: load it with
    ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(residual), adapter)``.
    Returns (residual_dir, adapter_dir).
    """
    out = Path(out_dir)
    base_dir = _save_plain(model, out / "residual_model", merged=False, tokenizer=tokenizer)
    adapter_dir = out / "adapter"
    parts = _salora_parts(model)
    adapter = model.active_adapter
    config = model.peft_config[adapter]
    saved_b = {
        n: layer.lora_B[adapter].weight.detach().clone() for n, (layer, *_rest) in parts.items()
    }
    saved_path = config.base_model_name_or_path
    try:
        with torch.no_grad():
            for layer, _A, B_eff, _s in parts.values():
                layer.lora_B[adapter].weight.copy_(B_eff)
        config.base_model_name_or_path = str(base_dir.resolve())
        model.save_pretrained(str(adapter_dir), safe_serialization=True)
    finally:
        config.base_model_name_or_path = saved_path
        with torch.no_grad():
            for name, (layer, *_rest) in parts.items():
                layer.lora_B[adapter].weight.copy_(saved_b[name])
    info = {
        "method": "SaLoRA",
        "note": "C is folded into lora_B (B' = C B); load on top of ../residual_model",
        "layers": len(parts),
    }
    (adapter_dir / "salora.json").write_text(json.dumps(info, indent=2))
    return base_dir, adapter_dir


def export_errors(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample | str],
    original: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
) -> dict[str, float]:
    """Max |Δ logits| on ``prompts`` between the trained SaLoRA ``model`` and its exports,
    saved to a temporary folder and loaded back: the merged model (plain transformers), the
    residual model + folded adapter (peft), and the folded adapter wrongly put on the
    ``original`` model (path or hub id), which adds the initial update twice. The first two
    must be at float rounding, the last is not."""
    enc = encode_prompts(tokenizer, prompts, next(model.parameters()).device)
    with torch.no_grad():
        reference = model(**enc).logits
    with tempfile.TemporaryDirectory() as tmp:
        merged = load_model(
            export_merged(model, f"{tmp}/merged", tokenizer), dtype=dtype, device=device
        )
        residual, adapter = export_adapter(model, f"{tmp}/split", tokenizer)
        loaded = {
            "merged (plain transformers)": merged,
            "residual + LoRA adapter (peft)": finetune.load_adapter(
                load_model(residual, dtype=dtype, device=device), adapter
            ),
            "adapter on the ORIGINAL model (wrong)": finetune.load_adapter(
                load_model(original, dtype=dtype, device=device), adapter
            ),
        }
        with torch.no_grad():
            return {k: float((m(**enc).logits - reference).abs().max()) for k, m in loaded.items()}
