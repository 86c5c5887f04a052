"""Forward hooks that are always removed, and the hidden-state tensor of a module's output."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

Hook = Callable[[torch.nn.Module, tuple, object], object]


@contextmanager
def forward_hooks(pairs: Sequence[tuple[torch.nn.Module, Hook]]) -> Iterator[None]:
    """Register forward hooks for the duration of a ``with`` block; they are removed on exit,
    also when the block raises (a leftover hook would silently change every later forward)."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def first_output(out: object) -> torch.Tensor:
    """The hidden-state tensor of a module output (attention returns ``(output, weights)``)."""
    return out[0] if isinstance(out, tuple) else out


def replace_first_output(out: object, new: torch.Tensor) -> object:
    """``out`` with its hidden-state tensor replaced (keeps the tuple structure of attention)."""
    return (new, *out[1:]) if isinstance(out, tuple) else new
