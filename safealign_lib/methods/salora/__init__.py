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

from safealign_lib.methods.salora.config import INITS, NITER, SIGNS, STORES
from safealign_lib.methods.salora.export import export_adapter, export_errors, export_merged
from safealign_lib.methods.salora.features import LayerFeatures, collect_layer_inputs
from safealign_lib.methods.salora.layer import SafetyProjectedLinear
from safealign_lib.methods.salora.model import (
    apply_salora,
    feature_drift,
    invariance_error,
    train_salora,
)
from safealign_lib.methods.salora.module import (
    SafetyLayer,
    SafetyModule,
    build_safety_module,
    cumulative_energy,
    energy_rank,
    layer_output_subspace,
    output_share,
    output_shares,
    output_spectra,
    output_spectrum,
    rank_for_energy,
    rank_limit,
)

__all__ = [
    "INITS",
    "NITER",
    "SIGNS",
    "STORES",
    "LayerFeatures",
    "collect_layer_inputs",
    "SafetyLayer",
    "SafetyModule",
    "build_safety_module",
    "cumulative_energy",
    "energy_rank",
    "layer_output_subspace",
    "output_share",
    "output_shares",
    "output_spectra",
    "output_spectrum",
    "rank_for_energy",
    "rank_limit",
    "SafetyProjectedLinear",
    "apply_salora",
    "feature_drift",
    "invariance_error",
    "train_salora",
    "export_adapter",
    "export_errors",
    "export_merged",
]
