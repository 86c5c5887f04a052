"""Names of blocks and modules, and the transformers model inside a peft wrapper."""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(r"\.layers\.(\d+)\.")


def block_and_module(name: str) -> tuple[int | None, str]:
    """``model.layers.3.self_attn.q_proj.weight`` -> (3, "q_proj")."""
    m = _BLOCK.search(name)
    parts = name.split(".")
    return (int(m.group(1)) if m else None), (parts[-2] if len(parts) > 1 else parts[0])


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PeftModel (or LoraModel); the model itself otherwise."""
    from peft import PeftModel
    from peft.tuners.lora import LoraModel

    if isinstance(model, PeftModel):
        model = model.base_model
    if isinstance(model, LoraModel):
        model = model.model
    return model


def lora_modules(
    model: torch.nn.Module, adapter_name: str = "default"
) -> dict[str, torch.nn.Module]:
    """{module name: LoRA layer} of a peft model, names relative to the transformers model."""
    from peft.tuners.lora import LoraLayer

    found = {
        n: m
        for n, m in inner_model(model).named_modules()
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A
    }
    if not found:
        raise ValueError(
            f"No LoRA modules with adapter {adapter_name!r} in {type(model).__name__}; "
            "wrap the model with finetune.add_lora or load an adapter first."
        )
    return found
