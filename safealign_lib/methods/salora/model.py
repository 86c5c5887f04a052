"""A SaLoRA model: the safety projector put into a peft LoRA model, its task-subspace
initialisation, its training, and measurements of the guarantee (invariance) and its limit
(feature drift)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib.adapters import finetune
from safealign_lib.adapters.hooks import forward_hooks
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.methods.salora.config import INITS, NITER, SIGNS
from safealign_lib.methods.salora.features import (
    LayerFeatures,
    _canonical,
    _outer_modules,
    _target_linears,
)
from safealign_lib.methods.salora.layer import SafetyProjectedLinear
from safealign_lib.methods.salora.module import (
    SafetyModule,
    _project,
    _randomized_svd,
    layer_output_subspace,
)
from safealign_lib.models.chat import (
    ChatExample,
    collate,
    format_prompt,
    padding_id,
    tokenize_example,
)


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
