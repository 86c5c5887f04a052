"""The SaLoRA layer: LoRA's B followed by the fixed safety projector, as one linear map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from safealign_lib.methods.salora.config import SIGNS


def _project(y: Tensor, U: Tensor, sign: str) -> Tensor:
    """Apply C to the last axis of ``y`` without forming C (``y`` rows are output vectors)."""
    inside = (y @ U.to(y.dtype)) @ U.to(y.dtype).T
    return y - inside if sign == "correct" else inside


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
