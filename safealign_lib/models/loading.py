"""Load any Hugging Face causal LM (hub id or local folder) the safe way.

Weights load from safetensors only (``use_safetensors=True``): a checkpoint that ships only
pickled ``.bin`` files is refused with a clear error instead of being unpickled.
``trust_remote_code`` stays off unless the caller turns it on explicitly. The hub is reached
only on an explicit opt-in (``allow_download=True``, or :func:`allow_hub` — which a profile
naming hub models turns on): otherwise a name that is not an existing folder is an error that
names it, so a mistyped local path is never looked up on the hub. A checkpoint with NaN or inf
weights is refused at load, naming the tensor.
"""

from __future__ import annotations

import json
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


_HUB = {"allowed": False}


def allow_hub(enabled: bool = True) -> None:
    """Allow (or forbid again) loading models and tokenizers by hub id in this process."""
    _HUB["allowed"] = bool(enabled)


def hub_allowed() -> bool:
    """Whether loading by hub id is allowed (see :func:`allow_hub`)."""
    return _HUB["allowed"]


def _check_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); the checkpoint is incomplete or corrupt — "
            "rebuild it (`safealign organism build`) or download it again."
        ) from err


def _check_local(path: Path, what: str = "model") -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model folder {path} does not exist. Build the organism with "
            "`safealign organism build`, or pass a hub id such as 'meta-llama/Llama-2-7b-chat-hf' "
            "with allow_download=True."
        )
    if what == "tokenizer":
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            raise FileNotFoundError(
                f"No tokenizer files (tokenizer.json or tokenizer.model) in {path}; is it the "
                "model folder? The organism's folders hold them (`safealign organism build`)."
            )
        return
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"No config.json in {path}; it is not a model folder.")
    _check_json(path / "config.json")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        bins = [p.name for p in path.glob("*.bin")]
        hint = (
            f" It holds pickled weights ({', '.join(bins)}); convert them to safetensors."
            if bins
            else ""
        )
        raise FileNotFoundError(f"No *.safetensors weights in {path}.{hint}")
    from safetensors import safe_open

    for f in shards:
        try:
            with safe_open(str(f), framework="pt"):  # reads and checks the header only
                pass
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(
                f"{f} is not a readable safetensors file ({err}); rebuild the checkpoint "
                "(`safealign organism build`) or download it again."
            ) from err


def _resolve(name_or_path: str | os.PathLike, allow_download: bool | None) -> tuple[str, bool]:
    """(the name to load, whether it is local); an error for a missing path without opt-in."""
    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.exists():
        return str(path), True
    allowed = hub_allowed() if allow_download is None else allow_download
    looks_like_path = s.startswith((".", "/", "~")) or s.count("/") != 1
    if looks_like_path or not allowed:
        raise FileNotFoundError(
            f"{s!r} does not exist as a folder"
            + (
                "."
                if looks_like_path
                else " and hub downloads are off (the course never reaches the network unless "
                "asked). For a hub model pass allow_download=True or use a profile that names "
                "hub models (`-p profile gpu`)."
            )
            + " For the course's organism use data/organism/chat or data/organism/base "
            "(`safealign organism build` rebuilds them)."
        )
    return s, False


def is_local(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` is an existing path or looks like one (not ``owner/name``)."""
    s = str(name_or_path)
    return Path(s).expanduser().exists() or s.startswith((".", "/", "~")) or s.count("/") != 1


def check_finite(model: torch.nn.Module, source: str = "the model") -> None:
    """Raise naming the first parameter or buffer with NaN or inf (a corrupt checkpoint)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"Tensor {name!r} of {source} contains NaN or inf: the checkpoint is corrupt. "
                "Rebuild it (`safealign organism build`) or download it again."
            )


def load_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    local_files_only: bool | None = None,
    allow_download: bool | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make it ready for batched generation (left padding, a pad token)."""
    name, local = _resolve(name_or_path, allow_download)
    if local:
        _check_local(Path(name), "tokenizer")
    tok = AutoTokenizer.from_pretrained(
        name,
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
    allow_download: bool | None = None,
) -> PreTrainedModel:
    """Load a causal LM from safetensors weights, in eval mode, on ``device``.

    ``name_or_path`` is a local folder (the organism's ``data/organism/chat``) or, with
    ``allow_download=True`` (or :func:`allow_hub`), a hub id (``meta-llama/Llama-2-7b-chat-hf``
    on a GPU runtime); with ``HF_HUB_OFFLINE=1`` hub ids load from the cache only. NaN or inf
    weights raise a ``ValueError`` naming the tensor.
    """
    name, local = _resolve(name_or_path, allow_download)
    if local:
        _check_local(Path(name))
    model = AutoModelForCausalLM.from_pretrained(
        name,
        dtype=resolve_dtype(dtype),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=local if local_files_only is None else local_files_only,
    )
    check_finite(model, name)
    model.to(device)
    model.eval()
    return model


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike, **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``load_model`` and ``load_tokenizer`` for the same checkpoint."""
    keep = ("trust_remote_code", "local_files_only", "allow_download")
    tok_kwargs = {k: v for k, v in kwargs.items() if k in keep}
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
