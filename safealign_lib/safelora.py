"""Safe LoRA (Hsu et al., NeurIPS 2024) with low-rank algebra, and the adapter glue it needs.

Pipeline (every step also serves SPLoRA, :mod:`safealign_lib.splora`)::

    factors = load_lora_factors(adapter_dir_or_peft_model)    # {weight name: (A, B, scale)}
    proj = compute_projections(factors, "data/organism/base", "data/organism/chat")
    df = safelora_scores(proj)                                # cosine per LoRA module
    names = select_layers(df["cosine"], k=2, side="low")      # the least aligned modules
    safelora_project(peft_model, proj, names)                 # lora_B <- C lora_B, in place

Conventions. Shapes follow PEFT: ``A`` is ``lora_A`` (r, d_in), ``B`` is ``lora_B`` (d_out, r)
and the update is ``dW = s B A`` with ``s = lora_alpha / r`` (``alpha / sqrt(r)`` under
rsLoRA). Modules are keyed by the base model's weight name,
e.g. ``model.layers.3.self_attn.q_proj.weight``.

The alignment matrix of a weight is ``V = W_chat - W_base``. The released "projection" is
``C = V V^T / ||V||_F`` (not idempotent: its eigenvalues are sigma_i^2 / ||V||_F, so it also
rescales); the exact projector onto V's column space is ``V (V^T V)^+ V^T``. Neither is ever
formed here: ``C X = V (V^T X) / ||V||_F`` costs O(d^2 r), and cosines, norms and distances of
``C dW`` vs ``dW`` come from r x r Gram matrices, never from a dense d x d update. Weights
are streamed one tensor at a time from safetensors files, so two 7B models never sit in
memory together (the released code loads both in fp32: about 54 GB).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from threadpoolctl import threadpool_limits

PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# a lora_A / lora_B key of an adapter file ("...q_proj.lora_A.weight") or of a live state dict
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])"
                       r"(?:\.(?P<adapter>[^.]+))?\.weight$")
_BLOCK = re.compile(r"\.layers\.(\d+)\.")

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
            raise ValueError(f"LoRA factors need A (r, d_in) and B (d_out, r) with the same r; got "
                             f"A {tuple(self.A.shape)} and B {tuple(self.B.shape)}.")
        if not (torch.isfinite(self.A).all() and torch.isfinite(self.B).all()):
            raise ValueError("LoRA factors contain NaN or inf; the adapter is corrupt or training diverged.")

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


def lora_modules(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, torch.nn.Module]:
    """{module name: LoRA layer} of a peft model, names relative to the transformers model."""
    from peft.tuners.lora import LoraLayer

    found = {n: m for n, m in inner_model(model).named_modules()
             if isinstance(m, LoraLayer) and adapter_name in m.lora_A}
    if not found:
        raise ValueError(f"No LoRA modules with adapter {adapter_name!r} in {type(model).__name__}; "
                         "wrap the model with finetune.add_lora or load an adapter first.")
    return found


def lora_factors_from_model(model: torch.nn.Module, adapter_name: str = "default") -> dict[str, LoraFactors]:
    """Read (A, B, scale) of every LoRA module of a live peft model (weights are copied)."""
    out = {}
    for name, m in lora_modules(model, adapter_name).items():
        if m.use_dora.get(adapter_name, False):
            raise ValueError(f"{name} uses DoRA; Safe LoRA and SPLoRA are defined for plain LoRA only.")
        if getattr(m, "fan_in_fan_out", False):
            raise ValueError(f"{name} stores weights transposed (fan_in_fan_out, GPT-2 Conv1D); "
                             "only nn.Linear layers are supported.")
        out[name + ".weight"] = LoraFactors(A=m.lora_A[adapter_name].weight.detach().float().clone(),
                                            B=m.lora_B[adapter_name].weight.detach().float().clone(),
                                            scale=float(m.scaling[adapter_name]))
    return out


def read_adapter(adapter_dir: PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, state dict) of an adapter folder saved by peft (no model needed)."""
    path = Path(adapter_dir)
    cfg_file, w_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not cfg_file.is_file():
        raise FileNotFoundError(f"No {ADAPTER_CONFIG} in {path}; save the adapter with "
                                "finetune.save_adapter (peft's save_pretrained).")
    if not w_file.is_file():
        extra = " It holds a pickled adapter_model.bin; re-save it with safe_serialization=True." \
            if (path / "adapter_model.bin").is_file() else ""
        raise FileNotFoundError(f"No {ADAPTER_WEIGHTS} in {path}.{extra}")
    config = json.loads(cfg_file.read_text())
    with safe_open(str(w_file), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    return config, state


def write_adapter(out_dir: PathLike, config: dict, state: Mapping[str, torch.Tensor]) -> Path:
    """Write (config, state dict) as a peft adapter folder that PeftModel.from_pretrained reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    return out


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    # peft's own rule: a pattern matches a module name or any suffix of it after a dot
    for pat, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pat})$", module):
            return value
    return default


def lora_factors_from_state(config: Mapping, state: Mapping[str, torch.Tensor]) -> dict[str, LoraFactors]:
    """(A, B, scale) per module from an adapter's config and state dict (file or live keys)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"This is a {config.get('peft_type')} adapter; Safe LoRA and SPLoRA need LoRA.")
    if config.get("use_dora"):
        raise ValueError("This adapter uses DoRA; Safe LoRA and SPLoRA are defined for plain LoRA only.")
    if config.get("fan_in_fan_out"):
        raise ValueError("This adapter stores weights transposed (fan_in_fan_out); only nn.Linear is supported.")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = LORA_KEY.match(key)
        if m:
            parts.setdefault(m.group("module"), {})[m.group("which")] = tensor
        elif "lora_embedding" in key:
            raise ValueError(f"{key}: LoRA on embeddings is not supported; target linear layers only.")
    if not parts:
        raise ValueError("No lora_A/lora_B weights in this adapter state dict.")
    out = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{module} has lora_{''.join(ab)} but not both lora_A and lora_B; the adapter "
                             "file is incomplete.")
        r = ab["A"].shape[0]
        r_cfg = _pattern_value(config.get("rank_pattern"), module, config.get("r", r))
        if r_cfg != r:
            raise ValueError(f"{module}: lora_A has rank {r} but the config says r={r_cfg}.")
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[module + ".weight"] = LoraFactors(A=ab["A"].float(), B=ab["B"].float(), scale=float(scale))
    return out


def load_lora_factors(source: PathLike | torch.nn.Module, adapter_name: str = "default") -> dict[str, LoraFactors]:
    """(A, B, scale) per module from an adapter folder or a live peft model."""
    if isinstance(source, torch.nn.Module):
        return lora_factors_from_model(source, adapter_name)
    return lora_factors_from_state(*read_adapter(source))


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
                    raise FileNotFoundError(f"{p / 'model.safetensors.index.json'} lists shard {shard}, "
                                            "which is missing; download the complete checkpoint.")
            self._where = {k: p / v for k, v in weight_map.items()}
            return
        elif p.is_dir():
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"No *.safetensors weights in {p}.")
        else:
            raise FileNotFoundError(f"Model folder {p} does not exist. Build the organism with "
                                    "`safealign organism build` or pass the right path.")
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
            raise KeyError(f"Tensor {name!r} is not in {self.path}.{hint} The adapter and the model "
                           "checkpoints must come from the same architecture.")
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


def _as_weights(w: SafetensorsWeights | PathLike) -> SafetensorsWeights:
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
                ThreadPoolExecutor(self.n_threads, thread_name_prefix="safealign-rows"))
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


def _load_pair(base: SafetensorsWeights, chat: SafetensorsWeights, name: str,
               expected_shape: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_chat, W_base) of one weight as float32 (memory maps where the files are float32)."""
    shapes = base.shape(name), chat.shape(name)
    if shapes[0] != shapes[1]:
        raise ValueError(f"{name}: base has shape {shapes[0]} but chat has {shapes[1]}; the two checkpoints "
                         "must share an architecture.")
    if expected_shape is not None and tuple(shapes[0]) != tuple(expected_shape):
        raise ValueError(f"{name}: the adapter expects a weight of shape (d_out, d_in) = {tuple(expected_shape)} "
                         f"but the checkpoints hold {shapes[0]}; the adapter belongs to another model.")
    if len(shapes[0]) != 2:
        raise ValueError(f"{name} has shape {shapes[0]}; an alignment matrix needs a 2-D weight.")
    return chat.get(name), base.get(name)


def _difference_pass(c: np.ndarray, b: np.ndarray, workers: RowWorkers, v: np.ndarray | None = None,
                     right: torch.Tensor | None = None) -> tuple[float, torch.Tensor | None]:
    """(||c - b||_F^2, right^T (c - b)) in one pass, writing c - b into ``v`` if given.

    A block of rows at a time: its difference, squared norm and contribution to ``right^T V``
    (``right``: d_out x k, e.g. lora_B) are computed while it is in cache. The block sums are
    added in float64: a single float32 norm over a 4096 x 4096 V loses digits (relative error
    ~1e-6 in the scores' distances, vs ~1e-9).
    """
    rt = None if right is None else right.detach().to(torch.float32).T.contiguous().numpy()  # k x d_out

    def rows(lo: int, hi: int) -> tuple[float, np.ndarray | None]:
        sq, acc = 0.0, None if rt is None else np.zeros((rt.shape[0], c.shape[1]), c.dtype)
        scratch = np.empty((_ROWS, c.shape[1]), c.dtype) if v is None else None
        for i in range(lo, hi, _ROWS):
            j = min(i + _ROWS, hi)
            blk = np.subtract(c[i:j], b[i:j], out=v[i:j] if v is not None else scratch[:j - i])
            flat = blk.reshape(-1)
            sq += float(np.dot(flat, flat))  # NaN/inf anywhere makes the sum non-finite
            if acc is not None:
                acc += rt[:, i:j] @ blk
        return sq, acc

    parts = workers.map_rows(rows, c.shape[0], c.size)
    rt_v = None if rt is None else torch.from_numpy(np.sum([p[1] for p in parts], axis=0))
    return sum(p[0] for p in parts), rt_v


def _difference_times(y: torch.Tensor, workers: RowWorkers, *, v: np.ndarray | None = None,
                      c: np.ndarray | None = None, b: np.ndarray | None = None) -> torch.Tensor:
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
            np.matmul(np.subtract(c[i:j], b[i:j], out=scratch[:j - i]), y_np, out=out[i:j])

    workers.map_rows(rows, rows_of.shape[0], rows_of.size)
    return torch.from_numpy(out)


def _checked_norm(sq: float, base: SafetensorsWeights, chat: SafetensorsWeights, name: str) -> float:
    """sqrt(sq), or a clear error naming the checkpoint that holds NaN or inf."""
    if math.isfinite(sq):
        return math.sqrt(sq)
    for w, which in ((chat, "chat"), (base, "base")):
        if not torch.isfinite(w.get(name)).all():
            raise ValueError(f"{name} in {w.path} contains NaN or inf; the {which} checkpoint is corrupt.")
    raise ValueError(f"{name}: chat - base overflows float32; the checkpoints are not comparable.")


def _read_alignment(base: SafetensorsWeights, chat: SafetensorsWeights, name: str,
                    expected_shape: tuple[int, int] | None, out: torch.Tensor | None = None,
                    right: torch.Tensor | None = None, workers: RowWorkers | None = None,
                    ) -> tuple[torch.Tensor, float, torch.Tensor | None]:
    """(V, ||V||_F, right^T V) for one weight; V is written into ``out`` when its shape fits."""
    c_t, b_t = _load_pair(base, chat, name, expected_shape)
    # reusing one buffer spares the page faults of a fresh d x d allocation per module
    fits = out is not None and out.shape == c_t.shape and out.dtype == c_t.dtype and out.is_contiguous()
    v_t = out if fits else torch.empty_like(c_t, memory_format=torch.contiguous_format)
    with contextlib.nullcontext(workers) if workers is not None else RowWorkers() as w:
        sq, rt_v = _difference_pass(c_t.numpy(), b_t.numpy(), w, v=v_t.numpy(), right=right)
    return v_t, _checked_norm(sq, base, chat, name), rt_v


def alignment_matrix(base: SafetensorsWeights | PathLike, chat: SafetensorsWeights | PathLike, name: str,
                     expected_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """V = W_chat - W_base for one weight, in float32, reading only that tensor from each model."""
    return _read_alignment(_as_weights(base), _as_weights(chat), name, expected_shape)[0]


def iter_alignment_matrices(base: SafetensorsWeights | PathLike, chat: SafetensorsWeights | PathLike,
                            names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, V) one weight at a time; only one V is alive if the caller drops it."""
    base, chat = _as_weights(base), _as_weights(chat)
    for name in names:
        yield name, alignment_matrix(base, chat, name)


# --- projectors ------------------------------------------------------------------------------------

class Projector:
    """The map X -> C X of one alignment matrix V, applied without forming a d x d matrix.

    ``kind="approx"``: the released C = V V^T / ||V||_F. ``kind="exact"``: the orthogonal
    projector U U^T onto V's column space (U from an SVD of V, singular values above
    ``rtol * sigma_max`` kept; ``rank`` keeps only the top ``rank`` directions). A full-rank
    square V makes the exact projector the identity: then no update is ever changed.
    """

    def __init__(self, kind: str, factor: torch.Tensor, norm: float = 1.0):
        self.kind, self._factor, self._norm = kind, factor, norm

    @classmethod
    def from_alignment(cls, v: torch.Tensor, kind: str = "approx", *, rtol: float | None = None,
                       rank: int | None = None, fro_norm: float | None = None) -> Projector:
        """Build the projector of ``v`` (d_out, d_in); ``fro_norm`` = ||V||_F if already known.

        The approx projector keeps a reference to ``v``: do not change ``v`` while using it.
        """
        if v.ndim != 2:
            raise ValueError(f"An alignment matrix is 2-D (d_out, d_in); got shape {tuple(v.shape)}.")
        if kind == "approx":
            norm = float(torch.linalg.matrix_norm(v)) if fro_norm is None else float(fro_norm)
            if norm == 0.0:
                raise ValueError("The alignment matrix is zero (chat and base weights are identical), so "
                                 "C = V V^T / ||V||_F is undefined; leave this module out.")
            return cls("approx", v, norm)
        if kind == "exact":
            u, s, _ = torch.linalg.svd(v, full_matrices=False)
            tol = (rtol if rtol is not None else max(v.shape) * torch.finfo(v.dtype).eps) * float(s[0])
            keep = int((s > tol).sum())
            if rank is not None:
                if not 1 <= rank <= min(v.shape):
                    raise ValueError(f"rank must be in [1, {min(v.shape)}], got {rank}.")
                keep = min(keep, rank)
            if keep == v.shape[0]:
                warnings.warn(f"V has full column rank ({keep}): the exact projector is the identity and "
                              "changes no update. Pass rank=... to project on V's top directions.",
                              stacklevel=2)
            return cls("exact", u[:, :keep].contiguous())
        raise ValueError(f"Unknown projector kind {kind!r}; use 'approx' (released) or 'exact'.")

    @property
    def d_out(self) -> int:
        return self._factor.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """C @ x for x of shape (d_out, k), in O(d_out * d_in * k)."""
        if x.shape[0] != self.d_out:
            raise ValueError(f"The projector acts on {self.d_out} rows; got x of shape {tuple(x.shape)}.")
        f = self._factor
        # (x^T f)^T rather than f^T x: BLAS is ~10x faster on this layout for thin x
        y = x.to(f.dtype).T @ f
        out = f @ y.T
        return out / self._norm if self.kind == "approx" else out

    def dense(self) -> torch.Tensor:
        """The d_out x d_out matrix itself: for teaching on small layers only."""
        return self.apply(torch.eye(self.d_out, dtype=self._factor.dtype))


def _random_frames(d: int, r: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n Haar-random orthonormal d x r frames, side by side: shape (d, n * r)."""
    g = torch.randn(n, d, r, generator=gen, dtype=torch.float64)
    q, rr = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(rr, dim1=-2, dim2=-1)).unsqueeze(-2)  # sign fix -> Haar
    return q.permute(1, 0, 2).reshape(d, n * r)


def rotation_null_distances(projector: Projector, factors: LoraFactors, n_samples: int,
                            seed: int = 0) -> torch.Tensor:
    """Distances ||C Q dW - Q dW||_F for ``n_samples`` Haar-random rotations Q of the output space.

    The null of "this update's direction has nothing to do with the alignment matrix": same
    singular values and input side as dW, output directions drawn at random. Q B has the law of
    U R where B = U_B R (thin QR) and U is a random orthonormal frame, so each sample costs
    O(d_out d_in r) and no d x d matrix is formed.
    """
    if n_samples < 2:
        raise ValueError(f"A rotation null needs n_samples >= 2, got {n_samples}.")
    gen = torch.Generator().manual_seed(seed)
    b = factors.B.double()
    _, r_b = torch.linalg.qr(b)
    frames = _random_frames(b.shape[0], factors.r, n_samples, gen)
    diff = (projector.apply(frames).double() - frames).reshape(b.shape[0], n_samples, factors.r)
    d = torch.einsum("dsr,rk->sdk", diff, r_b)  # (C - I) U R for every sample
    gram_d = torch.einsum("sdi,sdj->sij", d, d)
    a = factors.A.double()
    return factors.scale * torch.sqrt(torch.einsum("sij,ij->s", gram_d, a @ a.T).clamp_min(0.0))


@dataclass
class LayerProjection:
    """One module's factors, its projected ``CB = C @ B`` and (optionally) rotation-null distances."""

    factors: LoraFactors
    CB: torch.Tensor
    kind: str
    null_distances: torch.Tensor | None = None


def compute_projections(factors: Mapping[str, LoraFactors], base: SafetensorsWeights | PathLike,
                        chat: SafetensorsWeights | PathLike, *, projector: str = "approx",
                        rtol: float | None = None, rank: int | None = None, null_samples: int = 0,
                        seed: int = 0, progress: bool = False) -> dict[str, LayerProjection]:
    """Stream V = W_chat - W_base module by module and keep only C @ B (d_out x r) per module.

    ``projector`` is ``"approx"`` (released C = V V^T / ||V||_F, O(d^2 r) per module) or
    ``"exact"`` (an SVD of each V: O(d^3), seconds per 4096 x 4096 module). With
    ``null_samples > 0`` the rotation null of SPLoRA's E-DIEM is drawn while V is in memory
    (seeded per module). Peak memory: about two weight matrices, whatever the model size.
    """
    from tqdm.auto import tqdm

    if not factors:
        raise ValueError("No LoRA modules given; load them with load_lora_factors first.")
    base, chat = _as_weights(base), _as_weights(chat)
    out, buf = {}, None
    with RowWorkers() as workers:
        for i, (name, f) in enumerate(tqdm(factors.items(), desc="alignment", disable=not progress,
                                           leave=False)):
            if projector == "approx" and not null_samples:
                # only C B is needed: V is never stored, its blocks are formed twice in cache
                c_t, b_t = _load_pair(base, chat, name, f.shape)
                c, b = c_t.numpy(), b_t.numpy()
                sq, bt_v = _difference_pass(c, b, workers, right=f.B)
                norm = _checked_norm(sq, base, chat, name)
                # C B = V (B^T V)^T / ||V||_F
                cb = _difference_times(bt_v.T, workers, c=c, b=b) / norm
                null = None
                del c, b, c_t, b_t
            else:
                v, norm, bt_v = _read_alignment(base, chat, name, f.shape, out=buf, workers=workers,
                                                right=f.B if projector == "approx" else None)
                proj = Projector.from_alignment(v, projector, rtol=rtol, rank=rank, fro_norm=norm)
                null = rotation_null_distances(proj, f, null_samples, seed + i) if null_samples else None
                cb = (_difference_times(bt_v.T, workers, v=v.numpy()) / norm
                      if bt_v is not None else proj.apply(f.B))
                buf = v  # reused by the next module of the same shape
                del proj
            out[name] = LayerProjection(factors=f, CB=cb.float(), kind=projector, null_distances=null)
    return out


# --- low-rank scores ------------------------------------------------------------------------------

def _stats_batched(a: torch.Tensor, b: torch.Tensor, cb: torch.Tensor,
                   scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """lowrank_stats for stacked modules: a (L, r, d_in), b and cb (L, d_out, r), scale (L,)."""
    a, b, cb = a.double(), b.double(), cb.double()
    g_a = a @ a.transpose(1, 2)  # (L, r, r)
    s2 = scale.double() ** 2
    diff = cb - b

    def pair(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # s^2 <x^T y, A A^T> per module
        return s2 * ((x.transpose(1, 2) @ y) * g_a).sum(dim=(1, 2))

    ny, nx = pair(b, b).clamp_min(0).sqrt(), pair(cb, cb).clamp_min(0).sqrt()
    inner = pair(cb, b)
    dist = pair(diff, diff).clamp_min(0).sqrt()
    cos = torch.where((nx > 0) & (ny > 0), inner / (nx * ny), torch.full_like(inner, float("nan")))
    return {"norm_update": ny, "norm_projected": nx, "inner": inner, "distance": dist, "cosine": cos}


def lowrank_stats(A: torch.Tensor, B: torch.Tensor, CB: torch.Tensor, scale: float) -> dict[str, float]:
    """Norms, inner product, distance and cosine of X = s C B A vs Y = s B A from r x r Grams.

    ||Y||^2 = s^2 <B^T B, A A^T>, ||X||^2 = s^2 <(CB)^T CB, A A^T>, <X, Y> = s^2 <(CB)^T B, A A^T>
    and ||X - Y||^2 = s^2 <D^T D, A A^T> with D = CB - B (no cancellation). Cosine is NaN when
    either update is zero (an untrained adapter has B = 0).
    """
    out = _stats_batched(A[None], B[None], CB[None], torch.tensor([float(scale)]))
    return {k: float(v[0]) for k, v in out.items()}


def safelora_scores(projections: Mapping[str, LayerProjection]) -> pd.DataFrame:
    """One row per LoRA module (index: weight name): block, module, r, scale, norms of s B A and
    s C B A, their inner product, distance and cosine (Safe LoRA's similarity)."""
    if not projections:
        raise ValueError("No projections given; run compute_projections first.")
    groups: dict[tuple, list[str]] = {}
    for name, p in projections.items():  # stack modules of one shape: a few large ops, not many tiny ones
        groups.setdefault((tuple(p.factors.A.shape), tuple(p.factors.B.shape)), []).append(name)
    stats: dict[str, dict[str, float]] = {}
    for names in groups.values():
        fs = [projections[n].factors for n in names]
        out = _stats_batched(torch.stack([f.A for f in fs]), torch.stack([f.B for f in fs]),
                             torch.stack([projections[n].CB for n in names]),
                             torch.tensor([f.scale for f in fs]))
        for i, n in enumerate(names):
            stats[n] = {k: float(v[i]) for k, v in out.items()}
    rows = []
    for name, p in projections.items():
        block, module = block_and_module(name)
        rows.append({"name": name, "block": block, "module": module, "r": p.factors.r,
                     "scale": p.factors.scale, **stats[name]})
    return pd.DataFrame(rows).set_index("name")


def select_layers(scores: pd.Series | Mapping[str, float], *, k: int | None = None,
                  threshold: float | None = None, side: str = "low") -> list[str]:
    """Names of the modules to act on: exactly ``k`` (number mode) or all past ``threshold``.

    ``side="low"`` picks the lowest scores (``<= threshold``), as Safe LoRA does with cosine;
    ``side="high"`` the highest (``>= threshold``). Ties in number mode are broken by order.
    """
    s = pd.Series(scores, dtype=float)
    if (k is None) == (threshold is None):
        raise ValueError("Choose the layers either by number (k=...) or by threshold (threshold=...), "
                         "not both and not neither.")
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}.")
    if s.isna().any():
        bad = list(s.index[s.isna()])[:3]
        raise ValueError(f"Scores are NaN for {bad}...: an update is zero (untrained adapter?) or "
                         "undefined; drop those modules before choosing.")
    if k is not None:
        if int(k) != k or not 0 <= k <= len(s):
            raise ValueError(f"k must be an integer in [0, {len(s)}] (the number of LoRA modules), got {k}.")
        order = s.sort_values(ascending=(side == "low"), kind="stable")
        return list(order.index[: int(k)])
    chosen = s <= threshold if side == "low" else s >= threshold
    return list(s.index[chosen])


# --- applying the projection ------------------------------------------------------------------------

def _state_key(state: Mapping[str, torch.Tensor], name: str, which: str, adapter_name: str) -> str:
    module = name.removesuffix(".weight")
    for key in (f"{PEFT_PREFIX}{module}.lora_{which}.weight",
                f"{PEFT_PREFIX}{module}.lora_{which}.{adapter_name}.weight",
                f"{module}.lora_{which}.weight", f"{module}.lora_{which}.{adapter_name}.weight"):
        if key in state:
            return key
    raise KeyError(f"No lora_{which} weight for {name} in this adapter state dict.")


def safelora_project(target: torch.nn.Module | dict[str, torch.Tensor],
                     projections: Mapping[str, LayerProjection], names: Iterable[str],
                     adapter_name: str = "default") -> torch.nn.Module | dict[str, torch.Tensor]:
    """Set lora_B <- C @ lora_B for the modules ``names``.

    ``target`` is a live peft model (changed in place and returned) or an adapter state dict
    (a new dict is returned; save it with :func:`write_adapter`). ``C @ lora_B`` is the one
    stored by :func:`compute_projections`, so projecting twice does not compound.
    """
    names = list(names)
    missing = [n for n in names if n not in projections]
    if missing:
        raise KeyError(f"No projection computed for {missing[:3]}; pass them to compute_projections.")
    if isinstance(target, torch.nn.Module):
        modules = lora_modules(target, adapter_name)
        with torch.no_grad():
            for n in names:
                mod = n.removesuffix(".weight")
                if mod not in modules:
                    raise KeyError(f"{mod} is not a LoRA module of this model (or was pruned).")
                w = modules[mod].lora_B[adapter_name].weight
                cb = projections[n].CB
                if cb.shape != w.shape:
                    raise ValueError(f"{n}: projection has shape {tuple(cb.shape)} but lora_B has {tuple(w.shape)}.")
                w.copy_(cb.to(w.dtype))
        return target
    out = dict(target)
    for n in names:
        key = _state_key(out, n, "B", adapter_name)
        cb = projections[n].CB
        if cb.shape != out[key].shape:
            raise ValueError(f"{n}: projection has shape {tuple(cb.shape)} but lora_B has {tuple(out[key].shape)}.")
        out[key] = cb.to(out[key].dtype)
    return out


def project_adapter_dir(adapter_dir: PathLike, projections: Mapping[str, LayerProjection],
                        names: Iterable[str], out_dir: PathLike) -> Path:
    """Read an adapter folder, project ``names`` (lora_B <- C lora_B) and save it to ``out_dir``."""
    config, state = read_adapter(adapter_dir)
    return write_adapter(out_dir, config, safelora_project(state, projections, names))
