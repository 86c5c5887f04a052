"""Stream weights from safetensors one tensor at a time, and form the chat − base difference
V of one weight block by block with row-parallel NumPy passes (BLAS held to one thread per
call while the workers are open).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from threadpoolctl import threadpool_limits

from safealign_lib.adapters.lora_io import PathLike

# --- streaming weights from safetensors ----------------------------------------------------------


class SafetensorsWeights:
    """Read tensors one at a time from a model folder (``model.safetensors``, or shards listed in
    ``model.safetensors.index.json``) or from a single ``.safetensors`` file."""

    def __init__(self, path: PathLike):
        self.path = Path(path).expanduser()
        p = self.path
        self._where: dict[str, Path] = {}
        if p.is_file():
            files = [p]
        elif (p / "model.safetensors.index.json").is_file():
            weight_map = json.loads((p / "model.safetensors.index.json").read_text())["weight_map"]
            for shard in sorted(set(weight_map.values())):
                if not (p / shard).is_file():
                    raise FileNotFoundError(
                        f"{p / 'model.safetensors.index.json'} lists shard {shard}, "
                        "which is missing; download the complete checkpoint."
                    )
            self._where = {k: p / v for k, v in weight_map.items()}
            return
        elif p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"No *.safetensors weights in {p}.")
        else:
            raise FileNotFoundError(
                f"Model folder {p} does not exist. Build the organism with "
                "`safealign organism build` or pass the right path."
            )
        for f in files:
            with safe_open(str(f), framework="pt") as h:  # reads the header only
                for k in h.keys():
                    self._where[k] = f

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def _file(self, name: str) -> Path:
        if name not in self._where:
            close = difflib.get_close_matches(name, self._where, n=3)
            hint = f" Closest names: {close}." if close else ""
            raise KeyError(
                f"Tensor {name!r} is not in {self.path}.{hint} The adapter and the model "
                "checkpoints must come from the same architecture."
            )
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, read from the file header (no data loaded)."""
        with safe_open(str(self._file(name)), framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def get(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Load one tensor (and nothing else) as ``dtype``. It may be a private (copy-on-write)
        memory map of the file: changing it never changes the file."""
        with safe_open(str(self._file(name)), framework="pt") as f:
            return f.get_tensor(name).to(dtype)


def as_weights(w: SafetensorsWeights | PathLike) -> SafetensorsWeights:
    return w if isinstance(w, SafetensorsWeights) else SafetensorsWeights(w)


_ROWS = 64  # rows per block: a block of V (1 MB at d_in = 4096) is still in cache for its product
_PARALLEL_MIN = 1 << 20  # elements: below this, one thread does the whole weight


class RowWorkers:
    """Row-parallel passes over one weight at a time, for :func:`compute_projections`.

    The passes are NumPy calls on contiguous row ranges, one range per thread; NumPy releases
    the GIL inside them, and BLAS is held to one thread per call (``threadpool_limits``) while
    the workers are open. On skinny products such as ``B^T V`` (8 x 4096 x 4096) two
    single-threaded BLAS calls on half the rows each ran about twice as fast as one
    two-threaded MKL call on this course's 2-core machine (``bench/RESULTS.md``), and no idle
    BLAS threads spin between the passes. ``n_threads`` defaults to
    ``torch.get_num_threads()``. The BLAS limit is process-wide while the context is open.
    """

    def __init__(self, n_threads: int | None = None):
        n = torch.get_num_threads() if n_threads is None else n_threads
        if n < 1:
            raise ValueError(f"n_threads must be >= 1, got {n}.")
        self.n_threads = n
        self._stack = contextlib.ExitStack()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> RowWorkers:
        self._stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        if self.n_threads > 1:
            self._pool = self._stack.enter_context(
                ThreadPoolExecutor(self.n_threads, thread_name_prefix="safealign-rows")
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool = None
        self._stack.close()

    def map_rows(self, fn: Callable[[int, int], object], n_rows: int, n_elements: int) -> list:
        """``[fn(lo, hi), ...]`` over contiguous, block-aligned row ranges covering ``n_rows``."""
        n = self.n_threads if self._pool is not None and n_elements >= _PARALLEL_MIN else 1
        step = -(-n_rows // (n * _ROWS)) * _ROWS
        ranges = [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]
        if self._pool is None or len(ranges) == 1:
            return [fn(lo, hi) for lo, hi in ranges]
        futures = [self._pool.submit(fn, lo, hi) for lo, hi in ranges]
        return [f.result() for f in futures]


def load_pair(
    base: SafetensorsWeights,
    chat: SafetensorsWeights,
    name: str,
    expected_shape: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_chat, W_base) of one weight as float32 (memory maps where the files are float32)."""
    shapes = base.shape(name), chat.shape(name)
    if shapes[0] != shapes[1]:
        raise ValueError(
            f"{name}: base has shape {shapes[0]} but chat has {shapes[1]}; the two checkpoints "
            "must share an architecture."
        )
    if expected_shape is not None and tuple(shapes[0]) != tuple(expected_shape):
        raise ValueError(
            f"{name}: the adapter expects a weight of shape (d_out, d_in) = "
            f"{tuple(expected_shape)} "
            f"but the checkpoints hold {shapes[0]}; the adapter belongs to another model."
        )
    if len(shapes[0]) != 2:
        raise ValueError(f"{name} has shape {shapes[0]}; an alignment matrix needs a 2-D weight.")
    return chat.get(name), base.get(name)


def difference_pass(
    c: np.ndarray,
    b: np.ndarray,
    workers: RowWorkers,
    v: np.ndarray | None = None,
    right: torch.Tensor | None = None,
) -> tuple[float, torch.Tensor | None]:
    """(||c - b||_F^2, right^T (c - b)) in one pass, writing c - b into ``v`` if given.

    A block of rows at a time: its difference, squared norm and contribution to ``right^T V``
    (``right``: d_out x k, e.g. lora_B) are computed while it is in cache. The block sums are
    added in float64: a single float32 norm over a 4096 x 4096 V loses digits (relative error
    ~1e-6 in the scores' distances, vs ~1e-9).
    """
    rt = (
        None if right is None else right.detach().to(torch.float32).T.contiguous().numpy()
    )  # k x d_out

    def rows(lo: int, hi: int) -> tuple[float, np.ndarray | None]:
        sq, acc = 0.0, None if rt is None else np.zeros((rt.shape[0], c.shape[1]), c.dtype)
        scratch = np.empty((_ROWS, c.shape[1]), c.dtype) if v is None else None
        for i in range(lo, hi, _ROWS):
            j = min(i + _ROWS, hi)
            blk = np.subtract(c[i:j], b[i:j], out=v[i:j] if v is not None else scratch[: j - i])
            flat = blk.reshape(-1)
            sq += float(np.dot(flat, flat))  # NaN/inf anywhere makes the sum non-finite
            if acc is not None:
                acc += rt[:, i:j] @ blk
        return sq, acc

    parts = workers.map_rows(rows, c.shape[0], c.size)
    rt_v = None if rt is None else torch.from_numpy(np.sum([p[1] for p in parts], axis=0))
    return sum(p[0] for p in parts), rt_v


def difference_times(
    y: torch.Tensor,
    workers: RowWorkers,
    *,
    v: np.ndarray | None = None,
    c: np.ndarray | None = None,
    b: np.ndarray | None = None,
) -> torch.Tensor:
    """``V @ y`` for a thin ``y``: from ``v`` if given, else with ``V = c - b`` formed block by
    block in cache (one more read of both weights instead of storing V and reading it back)."""
    y_np = y.contiguous().numpy()
    rows_of = v if v is not None else c
    out = np.empty((rows_of.shape[0], y_np.shape[1]), dtype=rows_of.dtype)

    def rows(lo: int, hi: int) -> None:
        if v is not None:
            np.matmul(v[lo:hi], y_np, out=out[lo:hi])
            return
        scratch = np.empty((_ROWS, c.shape[1]), c.dtype)
        for i in range(lo, hi, _ROWS):
            j = min(i + _ROWS, hi)
            np.matmul(np.subtract(c[i:j], b[i:j], out=scratch[: j - i]), y_np, out=out[i:j])

    workers.map_rows(rows, rows_of.shape[0], rows_of.size)
    return torch.from_numpy(out)


def checked_norm(sq: float, base: SafetensorsWeights, chat: SafetensorsWeights, name: str) -> float:
    """sqrt(sq), or a clear error naming the checkpoint that holds NaN or inf, or saying that
    the two checkpoints are identical for this weight (V = 0: no alignment subspace)."""
    if sq == 0.0:
        raise ValueError(
            f"{name} is identical in {chat.path} and {base.path} (V = W_chat - W_base = 0), so "
            "there is no alignment direction to project onto. Pass the aligned chat model and "
            "the base model it was aligned from, not the same checkpoint twice."
        )
    if math.isfinite(sq):
        return math.sqrt(sq)
    for w, which in ((chat, "chat"), (base, "base")):
        if not torch.isfinite(w.get(name)).all():
            raise ValueError(
                f"{name} in {w.path} contains NaN or inf; the {which} checkpoint is corrupt."
            )
    raise ValueError(f"{name}: chat - base overflows float32; the checkpoints are not comparable.")


def read_alignment(
    base: SafetensorsWeights,
    chat: SafetensorsWeights,
    name: str,
    expected_shape: tuple[int, int] | None,
    out: torch.Tensor | None = None,
    right: torch.Tensor | None = None,
    workers: RowWorkers | None = None,
) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """(V, ||V||_F, right^T V) for one weight; V is written into ``out`` when its shape fits."""
    c_t, b_t = load_pair(base, chat, name, expected_shape)
    # reusing one buffer spares the page faults of a fresh d x d allocation per module
    fits = (
        out is not None
        and out.shape == c_t.shape
        and out.dtype == c_t.dtype
        and out.is_contiguous()
    )
    v_t = out if fits else torch.empty_like(c_t, memory_format=torch.contiguous_format)
    with contextlib.nullcontext(workers) if workers is not None else RowWorkers() as w:
        sq, rt_v = difference_pass(c_t.numpy(), b_t.numpy(), w, v=v_t.numpy(), right=right)
    return v_t, checked_norm(sq, base, chat, name), rt_v


def alignment_matrix(
    base: SafetensorsWeights | PathLike,
    chat: SafetensorsWeights | PathLike,
    name: str,
    expected_shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """V = W_chat - W_base for one weight, in float32, reading only that tensor from each model."""
    return read_alignment(as_weights(base), as_weights(chat), name, expected_shape)[0]


def iter_alignment_matrices(
    base: SafetensorsWeights | PathLike, chat: SafetensorsWeights | PathLike, names: Iterable[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, V) one weight at a time; only one V is alive if the caller drops it."""
    base, chat = as_weights(base), as_weights(chat)
    for name in names:
        yield name, alignment_matrix(base, chat, name)
