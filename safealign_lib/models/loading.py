"""Load any Hugging Face causal LM (hub id or local folder) the safe way.

Weights load from safetensors only (``use_safetensors=True``): a checkpoint that ships only
pickled ``.bin`` files is refused with a clear error instead of being unpickled.
``trust_remote_code`` stays off unless the caller turns it on explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"bf16"``/``"float32"``/... or a torch dtype into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def _check_local(path: Path) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder {path} does not exist. Build the organism with "
            "`safealign organism build`, or pass a hub id such as 'meta-llama/Llama-2-7b-chat-hf'."
        )
    if not any(path.glob("*.safetensors")):
        bins = [p.name for p in path.glob("*.bin")]
        hint = (
            f" It holds pickled weights ({', '.join(bins)}); convert them to safetensors."
            if bins
            else ""
        )
        raise FileNotFoundError(f"No *.safetensors weights in {path}.{hint}")


def is_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` looks like a filesystem path rather than a hub id."""
    s = str(name_or_path)
    return Path(s).exists() or s.startswith((".", "/", "~")) or s.count("/") > 1


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    local_files_only: bool | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make it ready for batched generation (left padding, a pad token)."""
    local = is_local(name_or_path)
    if local:
        _check_local(Path(name_or_path).expanduser())
    tok = AutoTokenizer.from_pretrained(
        str(name_or_path),
        trust_remote_code=trust_remote_code,
        local_files_only=local if local_files_only is None else local_files_only,
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
    local_files_only: bool | None = None,
) -> PreTrainedModel:
    """Load a causal LM from safetensors weights, in eval mode, on ``device``.

    ``name_or_path`` is a local folder (the organism's ``data/organism/chat``) or a hub id
    (``meta-llama/Llama-2-7b-chat-hf`` on a GPU runtime). Hub ids need network access unless
    the weights are already cached; with ``HF_HUB_OFFLINE=1`` they load from the cache only.
    """
    local = is_local(name_or_path)
    if local:
        _check_local(Path(name_or_path).expanduser())
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path),
        dtype=resolve_dtype(dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=local if local_files_only is None else local_files_only,
    )
    model.to(device)
    model.eval()
    return model


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_model`` and ``load_tokenizer`` for the same checkpoint."""
    tok_kwargs = {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "local_files_only")}
    return load_model(name_or_path, **kwargs), load_tokenizer(name_or_path, **tok_kwargs)


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of transformer blocks of a Llama-like model (works through a peft wrapper)."""
    m = model
    for attr in ("base_model", "model"):
        # peft: PeftModel.base_model.model.model.layers ; plain: LlamaForCausalLM.model.layers
        while hasattr(m, attr) and not hasattr(m, "layers"):
            m = getattr(m, attr)
    if not hasattr(m, "layers"):
        raise ValueError(
            f"Cannot find decoder layers in {type(model).__name__}; expected a Llama-like "
            "model with `.model.layers`."
        )
    return m.layers


def fingerprint(name_or_path: str | os.PathLike) -> str:
    """A short content hash of a local checkpoint's safetensors files (the id itself for a hub
    model), so caches of fine-tunes notice when the model they were trained on changes."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return str(name_or_path)
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
