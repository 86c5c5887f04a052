"""Exporting a trained SaLoRA model as a plain model or a plain LoRA adapter that any peft
code loads, with the projector folded into B."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from safealign_lib.adapters import finetune
from safealign_lib.methods.salora.layer import SafetyProjectedLinear
from safealign_lib.methods.salora.model import _lora_layers
from safealign_lib.models.chat import ChatExample, encode_prompts
from safealign_lib.models.loading import load_model

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
