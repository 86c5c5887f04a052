"""Fine-tunes remembered across runs: :func:`~safealign_lib.adapters.finetune.train` is seeded
and deterministic, so a run with the same starting model, data, settings and objective gives the
same weights; a cached run is read back instead of trained again.

Off unless ``$SAFEALIGN_ANSWER_CACHE`` names a folder (see :mod:`safealign_lib.models.memo`,
which also gives the key its model digest, code digests, library versions and platform). An
entry is the trained parameters (safetensors), the run's record (losses, seconds, parameter
counts) and the random number generators' states at the end of the run, which are restored on a
hit, so that whatever the caller draws next is what it would have drawn after training. Only
CPU runs are cached (their generator states are all three of Python's, NumPy's and torch's),
and only with the plain loss or an objective whose settings the key can read.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from safealign_lib.models import memo

if TYPE_CHECKING:
    from safealign_lib.adapters.finetune import TrainResult
    from safealign_lib.config import TrainSettings

KIND = "train"
RNG = "__rng_torch__"


def objective_key(loss_fn: Callable | None) -> object | None:
    """What the key records of an objective: ``"answer_loss"`` for the plain loss; for a
    function, its module's source and qualified name with the values it closes over when they
    are settings (dataclasses or simple values); None (not cacheable) otherwise."""
    if loss_fn is None:
        return "answer_loss"
    if not inspect.isfunction(loss_fn):
        return None
    cells = []
    for cell in loss_fn.__closure__ or ():
        value = cell.cell_contents
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            cells.append(repr(value))
        elif memo.plain(value) is not None or value is None:
            cells.append(memo.plain(value))
        else:
            return None
    module = inspect.getmodule(loss_fn)
    source = memo.source_digest(module) if module is not None else loss_fn.__qualname__
    return [loss_fn.__qualname__, source, cells]


def _spec(
    model: torch.nn.Module,
    feats: Sequence[dict[str, torch.Tensor]],
    settings: TrainSettings,
    loss_fn: Callable | None,
) -> dict | None:
    objective = objective_key(loss_fn)
    if objective is None or next(model.parameters()).device.type != "cpu":
        return None
    digest = memo.model_digest(model)
    if digest is None:
        return None
    from safealign_lib.adapters import finetune
    from safealign_lib.models import chat

    given = {k: v for k, v in dataclasses.asdict(settings).items() if k != "progress"}
    return {
        "model": digest,
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        "data": memo.tensors_digest(feats),
        "settings": memo.plain(given),
        "objective": objective,
        "code": memo.source_digest(finetune, chat),
    }


def _rng_state() -> dict:
    state = np.random.get_state()  # noqa: NPY002 - the legacy global generator, as seeded
    version, internal, gauss = random.getstate()
    return {
        "numpy": [state[0], state[1].tolist(), *state[2:]],
        "python": [version, list(internal), gauss],
    }


def _restore_rng(rng: dict, torch_state: torch.Tensor) -> None:
    n = rng["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))  # noqa: NPY002
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch_state)


def remember_training(
    model: torch.nn.Module,
    feats: Sequence[dict[str, torch.Tensor]],
    settings: TrainSettings,
    loss_fn: Callable | None,
    compute: Callable[[], TrainResult],
) -> TrainResult:
    """``compute()`` (the training loop, which changes ``model``'s trainable parameters), or
    the same run read back into ``model`` when it is cached (``TrainResult.cached`` is then
    True and ``seconds`` is the recorded time of the run that trained it)."""
    from safealign_lib.adapters.finetune import TrainResult

    spec = _spec(model, feats, settings, loss_fn) if memo.folder() is not None else None
    if spec is None:
        return compute()
    base = memo.entry_path(KIND, spec)
    record, weights = base.with_suffix(".json"), base.with_suffix(".safetensors")
    entry = memo.read_json(record, spec)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if entry is not None:
        try:
            tensors = load_tensors(weights.read_bytes())
            ok = set(tensors) == {*params, RNG} and all(
                tensors[n].shape == p.shape for n, p in params.items()
            )
        except (OSError, ValueError, RuntimeError, SafetensorError):
            ok = False  # unreadable weights: train again and overwrite the entry
        if ok:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(tensors[n])
            _restore_rng(entry["rng"], tensors[RNG])
            model.eval()
            return TrainResult(**entry["result"], cached=True)
    result = compute()
    tensors = {n: p.detach().cpu().contiguous() for n, p in params.items()}
    tensors[RNG] = torch.get_rng_state()
    memo.write_atomic(weights, save_tensors(tensors))
    out = {k: v for k, v in result.as_dict().items() if k != "cached"}
    # the record last: it marks a complete entry
    memo.write_atomic(
        record, json.dumps({"spec": spec, "result": out, "rng": _rng_state()}).encode()
    )
    return result
