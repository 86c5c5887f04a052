"""Model outputs remembered across runs: greedy answers and first-token probabilities are pure
functions of the model's state, the encoded prompts and the settings, so a call that was made
once (in this notebook, an earlier one, or an earlier run) is read back instead of computed.

Off unless ``$SAFEALIGN_ANSWER_CACHE`` names a folder; the course's notebooks set it to
``<build>/answers`` (pool workers inherit it). An entry's key covers:

- the model's state: every parameter and buffer (name, dtype, shape, bytes), every module's
  class and simple attributes (PEFT's active and disabled adapters, scalings, ``training``...);
- the source of every ``safealign_lib`` class in the model (a SaLoRA layer's forward) and of
  the code that computes the entry (:data:`CODE`);
- the encoded prompts (token ids and attention masks, batch by batch) and the settings;
- torch's and transformers' versions and the platform.

A model with a forward hook anywhere (steering, activation capture) is never cached: a hook can
change the outputs in a way its weights do not show. An unreadable entry is computed again and
rewritten, never trusted.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from safealign_lib.config import ANSWER_CACHE_ENV

ENV = ANSWER_CACHE_ENV
_SIMPLE = (type(None), bool, int, float, str)


def folder() -> Path | None:
    """The cache folder, or None when caching is off."""
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else None


@contextmanager
def disabled() -> Iterator[None]:
    """Compute everything inside the block, reading and writing nothing (e.g. to time a
    computation: a cached result would report the time of the run that made it)."""
    saved = os.environ.pop(ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ENV] = saved


def plain(value: object) -> object | None:
    """``value`` when it is made only of None, bools, numbers and strings (in lists, tuples,
    sets and string-keyed dicts), else None (not part of the key: tensors, modules, callables)."""
    if isinstance(value, _SIMPLE):
        return value
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        ok = all(i is not None or v is None for i, v in zip(items, value, strict=True))
        return items if ok else None
    if isinstance(value, (set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(value)
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        items = {k: plain(v) for k, v in value.items()}
        ok = all(items[k] is not None or value[k] is None for k in value)
        return dict(sorted(items.items())) if ok else None
    return None


def _has_hooks(model: torch.nn.Module) -> bool:
    from torch.nn.modules import module as m

    if m._global_forward_hooks or m._global_forward_pre_hooks:
        return True
    return any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())


def _class_source(cls: type) -> str:
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):  # a class defined where its source cannot be read
        return cls.__qualname__


def model_digest(model: torch.nn.Module) -> str | None:
    """A digest of everything the model's outputs depend on (see the module's docstring), or
    None when a forward hook makes them depend on more."""
    if _has_hooks(model):
        return None
    h = hashlib.sha256()
    own: set[type] = set()
    for name, mod in model.named_modules():
        cls = type(mod)
        attrs = {k: v for k, v in vars(mod).items() if plain(v) is not None}
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{plain(attrs)}\n".encode())
        if cls.__module__.startswith("safealign_lib"):
            own.add(cls)
    for cls in sorted(own, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        h.update(_class_source(cls).encode())
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def tensors_digest(batches: Sequence[Mapping[str, torch.Tensor | Sequence[int]]]) -> str:
    """A digest of encoded batches (every tensor's or id list's name, dtype, shape, values)."""
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(b):
            t = torch.as_tensor(b[k]).detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}\n".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def environment() -> dict[str, str]:
    """The library versions and the platform an entry was computed with."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def entry_path(kind: str, spec: Mapping[str, object]) -> Path | None:
    """Where the entry of ``kind`` with ``spec`` lives (a path without suffix), or None when
    caching is off. The key adds :func:`environment` to ``spec``."""
    root = folder()
    if root is None:
        return None
    full = {**spec, "kind": kind, "environment": environment()}
    key = hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return root / kind / key[:2] / key


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` whole under a temporary name, then rename it: a reader never sees half a
    file, and two processes writing the same entry leave one whole copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_json(path: Path, spec: Mapping[str, object]) -> dict | None:
    """The JSON entry at ``path`` when it is readable and was written for ``spec``, else None
    (missing, half-written or corrupt entries are computed again)."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("spec") != json.loads(json.dumps(spec)):
        return None
    return entry


def remember(
    kind: str,
    model: torch.nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    settings: Mapping[str, object],
    code: str,
    compute: Callable[[], Any],
    dump: Callable[[Any], object] = lambda v: v,
    load: Callable[[object], Any] = lambda v: v,
) -> Any:
    """``compute()``, or its earlier result for the same key when caching is on.

    ``kind`` names what is computed (``"generate"``); ``batches`` are the encoded inputs;
    ``settings`` whatever else the result depends on; ``code`` a digest of the computing code.
    ``dump`` turns the result into JSON, ``load`` turns the JSON back into the result."""
    digest = model_digest(model) if folder() is not None else None
    if digest is None:
        return compute()
    spec = {
        "model": digest,
        "inputs": tensors_digest(batches),
        "settings": plain(dict(settings)),
        "code": code,
    }
    path = entry_path(kind, spec).with_suffix(".json")
    entry = read_json(path, spec)
    if entry is not None and "value" in entry:
        return load(entry["value"])
    value = compute()
    write_atomic(path, json.dumps({"spec": spec, "value": dump(value)}).encode())
    return value


def source_digest(*objects: object) -> str:
    """A digest of the source of modules or functions (the code of a cached computation)."""
    return hashlib.sha256("".join(inspect.getsource(o) for o in objects).encode()).hexdigest()
