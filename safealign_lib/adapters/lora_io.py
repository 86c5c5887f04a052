"""LoRA adapter files and live peft modules as plain (A, B, scale) factors.

Shapes follow PEFT: ``A`` is ``lora_A`` (r, d_in), ``B`` is ``lora_B`` (d_out, r), and a
module's update is ``dW = s B A`` with ``s = lora_alpha / r`` (``alpha / sqrt(r)`` under
rsLoRA). Modules are keyed by the base model's weight name, e.g.
``model.layers.3.self_attn.q_proj.weight``. Adapters are read and written as safetensors only.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from safealign_lib.adapters.naming import lora_modules

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# a lora_A / lora_B key of an adapter file ("...q_proj.lora_A.weight") or of a live state dict
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])"
    r"(?:\.(?P<adapter>[^.]+))?\.weight$"
)

PathLike = str | os.PathLike


# --- LoRA factors ------------------------------------------------------------------------------


@dataclass
class LoraFactors:
    """One LoRA module: ``A`` (r, d_in), ``B`` (d_out, r), and the scale s in dW = s B A."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    def __post_init__(self) -> None:
        if self.A.ndim != 2 or self.B.ndim != 2 or self.A.shape[0] != self.B.shape[1]:
            raise ValueError(
                f"LoRA factors need A (r, d_in) and B (d_out, r) with the same r; got "
                f"A {tuple(self.A.shape)} and B {tuple(self.B.shape)}."
            )
        if not (torch.isfinite(self.A).all() and torch.isfinite(self.B).all()):
            raise ValueError(
                "LoRA factors contain NaN or inf; the adapter is corrupt or training diverged."
            )

    @property
    def r(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the weight this module adapts."""
        return self.B.shape[0], self.A.shape[1]

    def delta(self) -> torch.Tensor:
        """Dense dW = s B A (d_out, d_in): for small layers and tests only."""
        return self.scale * (self.B.double() @ self.A.double())


def lora_factors_from_model(
    model: torch.nn.Module, adapter_name: str = "default"
) -> dict[str, LoraFactors]:
    """Read (A, B, scale) of every LoRA module of a live peft model (weights are copied)."""
    out = {}
    for name, m in lora_modules(model, adapter_name).items():
        if m.use_dora.get(adapter_name, False):
            raise ValueError(
                f"{name} uses DoRA; Safe LoRA and SPLoRA are defined for plain LoRA only."
            )
        if getattr(m, "fan_in_fan_out", False):
            raise ValueError(
                f"{name} stores weights transposed (fan_in_fan_out, GPT-2 Conv1D); "
                "only nn.Linear layers are supported."
            )
        out[name + ".weight"] = LoraFactors(
            A=m.lora_A[adapter_name].weight.detach().float().clone(),
            B=m.lora_B[adapter_name].weight.detach().float().clone(),
            scale=float(m.scaling[adapter_name]),
        )
    return out


def check_adapter_dir(adapter_dir: PathLike) -> tuple[Path, Path]:
    """(config file, weights file) of an adapter folder, after checking that both exist and
    parse; an adapter stored only as a pickle (``adapter_model.bin``) is refused."""
    path = Path(adapter_dir).expanduser()
    cfg_file, w_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not path.is_dir():
        raise FileNotFoundError(f"Adapter folder {path} does not exist; train and save one first.")
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"No {ADAPTER_CONFIG} in {path}; save the adapter with "
            "finetune.save_adapter (peft's save_pretrained)."
        )
    if not w_file.is_file():
        extra = (
            " It holds a pickled adapter_model.bin, which the course never loads (pickles can "
            "run code); re-save it with safe_serialization=True."
            if (path / "adapter_model.bin").is_file()
            else ""
        )
        raise FileNotFoundError(f"No {ADAPTER_WEIGHTS} in {path}.{extra}")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg_file} is not valid JSON ({err}); save the adapter again.") from err
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_file} holds a {type(config).__name__}, not a peft config object.")
    try:
        with safe_open(str(w_file), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(
            f"{w_file} is not a readable safetensors file ({err}); save the adapter again."
        ) from err
    _check_targets(config.get("target_modules"), keys, cfg_file)
    return cfg_file, w_file


def _check_targets(targets: object, keys: list[str], cfg_file: Path) -> None:
    """Every module the weights hold must be one of the config's ``target_modules`` (peft's
    rule: the name, or a suffix of it after a dot): peft skips the others without a word, and
    the loaded model then matches neither the adapter nor the base model."""
    if not isinstance(targets, list | tuple | set):
        return  # a regex (str) or none: peft's own matching, nothing to compare here
    modules = {m.group("module") for k in keys if (m := LORA_KEY.match(k))}
    names = {m.removeprefix(PEFT_PREFIX) for m in modules}
    missed = sorted(
        n for n in names if not any(n == t or n.endswith("." + str(t)) for t in targets)
    )
    if missed:
        raise ValueError(
            f"{cfg_file} lists target_modules {sorted(map(str, targets))}, but the weights also "
            f"hold {len(missed)} other module(s), e.g. {missed[0]!r}: peft would load without "
            "them. Add them to target_modules, or save the adapter again."
        )


def read_adapter(adapter_dir: PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of an adapter folder saved by peft (no model needed)."""
    cfg_file, w_file = check_adapter_dir(adapter_dir)
    config = json.loads(cfg_file.read_text(encoding="utf-8"))
    with safe_open(str(w_file), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    return config, state


def check_new_output(out_dir: PathLike, source: PathLike) -> Path:
    """``out_dir`` as a Path, or an error when it is the input folder ``source`` (a projected
    or pruned adapter must never replace the adapter it was made from)."""
    out, src = Path(out_dir).expanduser().resolve(), Path(source).expanduser().resolve()
    if out == src:
        raise ValueError(
            f"The output folder {out} is the input adapter's folder; writing there would replace "
            "the trained adapter. Choose another output folder."
        )
    return Path(out_dir)


def write_adapter(out_dir: PathLike, config: dict, state: Mapping[str, torch.Tensor]) -> Path:
    """Write (config, state dict) as a peft adapter folder that PeftModel.from_pretrained reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(
        {k: v.detach().contiguous() for k, v in state.items()},
        str(out / ADAPTER_WEIGHTS),
        metadata={"format": "pt"},
    )
    return out


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    # peft's own rule: a pattern matches a module name or any suffix of it after a dot
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def lora_factors_from_state(
    config: Mapping, state: Mapping[str, torch.Tensor]
) -> dict[str, LoraFactors]:
    """(A, B, scale) per module from an adapter's config and state dict (file or live keys)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(
            f"This is a {config.get('peft_type')} adapter; Safe LoRA and SPLoRA need LoRA."
        )
    if config.get("use_dora"):
        raise ValueError(
            "This adapter uses DoRA; Safe LoRA and SPLoRA are defined for plain LoRA only."
        )
    if config.get("fan_in_fan_out"):
        raise ValueError(
            "This adapter stores weights transposed (fan_in_fan_out); only nn.Linear is supported."
        )
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = LORA_KEY.match(key)
        if m:
            parts.setdefault(m.group("module"), {})[m.group("which")] = tensor
        elif "lora_embedding" in key:
            raise ValueError(
                f"{key}: LoRA on embeddings is not supported; target linear layers only."
            )
    if not parts:
        raise ValueError("No lora_A/lora_B weights in this adapter state dict.")
    out = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(
                f"{module} has lora_{''.join(ab)} but not both lora_A and lora_B; the adapter "
                "file is incomplete."
            )
        r = ab["A"].shape[0]
        r_cfg = _pattern_value(config.get("rank_pattern"), module, config.get("r", r))
        if r_cfg != r:
            raise ValueError(f"{module}: lora_A has rank {r} but the config says r={r_cfg}.")
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[module + ".weight"] = LoraFactors(
            A=ab["A"].float(), B=ab["B"].float(), scale=float(scale)
        )
    return out


def load_lora_factors(
    source: PathLike | torch.nn.Module, adapter_name: str = "default"
) -> dict[str, LoraFactors]:
    """(A, B, scale) per module from an adapter folder or a live peft model."""
    if isinstance(source, torch.nn.Module):
        return lora_factors_from_model(source, adapter_name)
    return lora_factors_from_state(*read_adapter(source))


# --- state-dict keys ----------------------------------------------------------------------


def lora_state_key(
    state: Mapping[str, torch.Tensor], name: str, which: str, adapter_name: str
) -> str:
    module = name.removesuffix(".weight")
    for key in (
        f"{PEFT_PREFIX}{module}.lora_{which}.weight",
        f"{PEFT_PREFIX}{module}.lora_{which}.{adapter_name}.weight",
        f"{module}.lora_{which}.weight",
        f"{module}.lora_{which}.{adapter_name}.weight",
    ):
        if key in state:
            return key
    raise KeyError(f"No lora_{which} weight for {name} in this adapter state dict.")
