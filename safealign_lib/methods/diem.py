"""DIEM (Tessari, Yao & Hogan 2024) and the two E-DIEM variants used by SPLoRA.

DIEM compares two n-dimensional vectors by their Euclidean distance, detrended and scaled by
the distribution of that distance between *random* vectors whose components are i.i.d.
uniform on ``[v_min, v_max]``::

    DIEM(a, b) = (v_max - v_min) / Var(d) * (||a - b|| - E[d])

with E[d] the median and Var(d) the variance of the random-pair distance ("the null").
The authors estimate both by Monte Carlo over 1e5 pairs; the closed form (R = v_max - v_min)
is E[d] ~ R * sqrt(n / 6) and Var(d) -> 7 R^2 / 120, independent of n: that is the point of
the metric.

E-DIEM (SPLoRA) replaces the uniform null by an *empirical* one. Two variants live here:

- :func:`ediem_released` reproduces SPLoRA's released code, whose "samples" are 50 copies of
  the pair being scored. Its null has no spread, so the score is 1 plus float rounding for
  every input. Kept only to show that defect; never use it to choose layers.
- :func:`ediem_empirical` is the course's reconstruction: ``(d - median(null)) / IQR(null)``
  against a real null (the distances of all layers, or of randomly rotated updates; see
  :mod:`safealign_lib.methods.splora`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

# Monte Carlo draws above this many numbers take minutes; the closed form is then the way.
_MAX_MC_DRAWS = 5_000_000_000


@dataclass(frozen=True)
class DiemNull:
    """Null statistics of DIEM for dimension ``n`` and component range ``[v_min, v_max]``.

    ``center`` is E[d] (the median random-pair distance), ``variance`` is Var(d) and
    ``orthogonal_distance`` the median distance between a random vector ``a`` and a unit
    vector orthogonal to it (the authors' convention: ``null(a')`` returns unit vectors).
    """

    n: int
    v_min: float
    v_max: float
    center: float
    variance: float
    orthogonal_distance: float
    method: str

    @property
    def range(self) -> float:
        """R = v_max - v_min."""
        return self.v_max - self.v_min


def _check_range(n: int, v_min: float, v_max: float) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"DIEM needs a positive integer dimension n, got {n!r}.")
    if not (math.isfinite(v_min) and math.isfinite(v_max)) or v_max <= v_min:
        raise ValueError(f"DIEM needs finite v_min < v_max, got v_min={v_min}, v_max={v_max}.")


@lru_cache(maxsize=64)
def _monte_carlo(n: int, v_min: float, v_max: float, n_pairs: int, seed: int) -> DiemNull:
    rng = np.random.default_rng(seed)
    r = v_max - v_min
    # ~16 MB per drawn block, whatever n is; numpy's generator is ~2x faster than torch's here
    chunk = max(1, (1 << 22) // n)
    d, a_sq = [], []
    for start in range(0, n_pairs, chunk):
        m = min(chunk, n_pairs - start)
        a = rng.random((m, n), dtype=np.float32) * np.float32(r) + np.float32(v_min)
        b = rng.random((m, n), dtype=np.float32) * np.float32(r) + np.float32(v_min)
        d.append(np.linalg.norm(a - b, axis=1).astype(np.float64))
        a_sq.append(np.einsum("ij,ij->i", a, a, dtype=np.float64))
    dist = np.concatenate(d)
    # a and a unit vector u orthogonal to it: ||a - u||^2 = ||a||^2 + 1 exactly (no SVD needed)
    orth = np.sqrt(np.concatenate(a_sq) + 1.0)
    return DiemNull(
        n=n,
        v_min=v_min,
        v_max=v_max,
        center=float(np.median(dist)),
        variance=float(np.var(dist)),
        orthogonal_distance=float(np.median(orth)),
        method=f"monte_carlo(n_pairs={n_pairs}, seed={seed})",
    )


def diem_null(
    n: int,
    v_min: float = 0.0,
    v_max: float = 1.0,
    *,
    method: str = "monte_carlo",
    n_pairs: int = 100_000,
    seed: int = 0,
) -> DiemNull:
    """Null statistics (E[d], Var(d), orthogonal-pair distance) for dimension ``n``.

    ``method="monte_carlo"`` follows the authors: ``n_pairs`` seeded random pairs, E[d] = the
    median distance, Var(d) = its (population) variance. ``method="closed_form"`` uses
    E[d] = R sqrt(n/6), Var(d) = 7 R^2 / 120 and, for the orthogonal pair,
    sqrt(E||a||^2 + 1) with E||a||^2 = n (v_min^2 + v_min v_max + v_max^2) / 3.
    Results of the Monte Carlo are cached per argument set.
    """
    _check_range(n, v_min, v_max)
    n, v_min, v_max = int(n), float(v_min), float(v_max)
    if method == "monte_carlo":
        if n_pairs < 2:
            raise ValueError(f"n_pairs must be >= 2 for a variance, got {n_pairs}.")
        if n * n_pairs * 2 > _MAX_MC_DRAWS:
            raise ValueError(
                f"Monte Carlo with n={n} and n_pairs={n_pairs} draws {2 * n * n_pairs:.1e} "
                "numbers; use method='closed_form' or fewer n_pairs."
            )
        return _monte_carlo(n, v_min, v_max, int(n_pairs), int(seed))
    if method == "closed_form":
        r = v_max - v_min
        mean_sq = (v_min**2 + v_min * v_max + v_max**2) / 3.0
        return DiemNull(
            n=n,
            v_min=v_min,
            v_max=v_max,
            center=r * math.sqrt(n / 6.0),
            variance=7.0 * r**2 / 120.0,
            orthogonal_distance=math.sqrt(n * mean_sq + 1.0),
            method="closed_form",
        )
    raise ValueError(f"Unknown DIEM null method {method!r}; use 'monte_carlo' or 'closed_form'.")


def diem_reference_values(null: DiemNull) -> dict[str, float]:
    """Landmarks of the DIEM scale for a null, as the authors' ``DIEM_Stat`` reports them.

    ``min`` (identical vectors, d = 0) = -R E[d] / Var(d); ``max`` (opposite corners of the
    cube, d = sqrt(n) R) = R (sqrt(n) R - E[d]) / Var(d); ``orthogonal_median`` = the DIEM of
    the median orthogonal pair; ``null_std`` = the standard deviation of DIEM over random
    pairs, R / sd(d). (The authors' MATLAB ``max`` omits the ``- E[d]``; their Python
    version and this one subtract it.)
    """
    r, e, var = null.range, null.center, null.variance
    return {
        "min": -r * e / var,
        "max": r * (math.sqrt(null.n) * r - e) / var,
        "orthogonal_median": r * (null.orthogonal_distance - e) / var,
        "null_std": r / math.sqrt(var),
    }


def diem(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    v_min: float,
    v_max: float,
    *,
    null: DiemNull | str = "monte_carlo",
    n_pairs: int = 100_000,
    seed: int = 0,
) -> torch.Tensor:
    """DIEM between vectors ``a`` and ``b`` along the last axis (batches broadcast).

    ``a`` and ``b`` have shape ``(..., n)``; the result has the broadcast batch shape (a 0-d
    tensor for two plain vectors), in float64. ``null`` is a :class:`DiemNull` computed
    earlier or the method name passed to :func:`diem_null` (Monte Carlo by default, as the
    authors do). Components are assumed to lie in ``[v_min, v_max]``; DIEM is not clipped.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"DIEM compares vectors of one dimension n (last axis); got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    try:
        torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    except RuntimeError as err:
        raise ValueError(
            f"DIEM pairs vectors batch by batch; the batch shapes {tuple(a.shape[:-1])} and "
            f"{tuple(b.shape[:-1])} do not broadcast. Give both the same number of vectors."
        ) from err
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("DIEM inputs contain NaN or inf; clean the vectors first.")
    n = a.shape[-1]
    if isinstance(null, str):
        null = diem_null(n, v_min, v_max, method=null, n_pairs=n_pairs, seed=seed)
    elif (null.n, null.v_min, null.v_max) != (n, float(v_min), float(v_max)):
        raise ValueError(
            f"The null was computed for n={null.n}, range [{null.v_min}, {null.v_max}] but "
            f"the vectors have n={n}, range [{v_min}, {v_max}]; recompute it with diem_null."
        )
    d = torch.linalg.vector_norm(a - b, dim=-1)
    return null.range * (d - null.center) / null.variance


def _row_cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))


def random_pair_geometry(dims: Sequence[int], n_pairs: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Cosine and distance of random vector pairs as the dimension grows (one row per ``n``).

    For each ``n`` in ``dims``, in order, draws ``n_pairs`` pairs ``a, b`` with float32
    components uniform on [0, 1] from one generator seeded once (so every dimension's draws
    follow the previous one's). Columns: mean and sd of the cosine (``cos_*``; centred on
    [-1, 1]: ``cos_centred_*``), of the distance (``dist_*``), and the relative contrast
    (farthest - nearest) / nearest of the points ``b`` seen from one query ``a[0]``.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in dims:
        a = rng.random((n_pairs, n), dtype=np.float32)
        b = rng.random((n_pairs, n), dtype=np.float32)
        cos, centred = _row_cosine(a, b), _row_cosine(2 * a - 1, 2 * b - 1)
        dist = np.linalg.norm(a - b, axis=1)
        to_query = np.linalg.norm(b - a[0], axis=1)
        rows.append(
            {
                "n": n,
                "cos_mean": cos.mean(),
                "cos_sd": cos.std(),
                "cos_centred_mean": centred.mean(),
                "cos_centred_sd": centred.std(),
                "dist_mean": dist.mean(),
                "dist_sd": dist.std(),
                "contrast": (to_query.max() - to_query.min()) / to_query.min(),
            }
        )
    return pd.DataFrame(rows).set_index("n")


def null_comparison(
    dims: Sequence[int], n_pairs: int = 100_000, seed: int = 0
) -> tuple[dict[int, DiemNull], pd.DataFrame]:
    """The Monte Carlo null of [0, 1] components for each ``n`` in ``dims``, and a table that
    sets its E[d] and Var(d) beside the closed forms sqrt(n/6) and 7/120."""
    nulls = {n: diem_null(n, 0.0, 1.0, n_pairs=n_pairs, seed=seed) for n in dims}
    closed = {n: diem_null(n, 0.0, 1.0, method="closed_form") for n in dims}
    table = pd.DataFrame(
        {
            "E[d] Monte Carlo": [nulls[n].center for n in dims],
            "E[d] = sqrt(n/6)": [closed[n].center for n in dims],
            "Var(d) Monte Carlo": [nulls[n].variance for n in dims],
            "Var(d) = 7/120": [closed[n].variance for n in dims],
        },
        index=pd.Index(list(dims), name="n"),
    )
    return nulls, table


def landmark_table(nulls: dict[int, DiemNull], dims: Sequence[int]) -> pd.DataFrame:
    """The landmarks of :func:`diem_reference_values`, one row per dimension ``n``."""
    table = pd.DataFrame({n: diem_reference_values(nulls[n]) for n in dims}).T
    table.index.name = "n"
    return table


# --- E-DIEM ---------------------------------------------------------------------------------


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile (linear interpolation); numpy past torch's 2**24-element limit."""
    flat = x.reshape(-1)
    if flat.numel() <= 1 << 24:
        return torch.quantile(flat, q)
    # The released code crashes here (MLP weights of 7B models); same definition, no crash.
    return torch.tensor(np.quantile(flat.numpy(), q), dtype=x.dtype)


def ediem_released(
    x: torch.Tensor, y: torch.Tensor, *, n_copies: int = 50, eps: float = 1e-6
) -> float:
    """E-DIEM **exactly as SPLoRA's released code computes it** (``compute_diem_torch_iqr``).

    Kept to demonstrate its defect, not to choose layers. The "empirical samples" are
    ``n_copies`` copies of the pair ``(x, y)`` itself, so the "expected distance" is the
    distance, the IQR is 0 and the score is ``(d + eps - mean(d, ..., d)) / (0 + eps)``
    = 1 plus float rounding, then shifted by ``q1(x) - q1(y)`` (a "max-min scaling" that
    multiplies and divides by the same number). Returns NaN where the released code returns
    None (``x == y`` or a zero scaling range). Computed in the inputs' dtype, as released;
    matrices larger than 2**24 elements, where ``torch.quantile`` made the released code
    crash, are handled with the same quantile definition.
    """
    if x.shape != y.shape:
        raise ValueError(
            f"E-DIEM compares tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if torch.equal(x, y):
        return float("nan")
    d = torch.linalg.vector_norm(x - y) + eps
    samples = torch.linalg.vector_norm(x - y).repeat(n_copies)  # the pair itself, n_copies times
    expected = samples.mean()
    iqr_scale = _quantile(samples, 0.75) - _quantile(samples, 0.25) + eps
    x_q1 = _quantile(x, 0.25)
    v_max = _quantile(x, 0.75) - x_q1
    v_min = x_q1 - _quantile(y, 0.25)
    if v_max - v_min == 0:
        return float("nan")
    unscaled = (d - expected) / iqr_scale
    return float(((unscaled - v_min) / (v_max - v_min)) * (v_max - v_min))


def robust_centre_spread(samples: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and interquartile range along the last axis (float64)."""
    s = torch.as_tensor(samples, dtype=torch.float64)
    if s.ndim == 0 or s.shape[-1] < 2:
        raise ValueError("An empirical null needs at least 2 samples along its last axis.")
    if not torch.isfinite(s).all():
        raise ValueError("The null samples contain NaN or inf.")
    q = torch.quantile(s, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=-1)
    return q[1], q[2] - q[0]


def ediem_empirical(
    distance: torch.Tensor | np.ndarray | float, null_distances: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """The course's E-DIEM: ``(d - median(null)) / IQR(null)`` against a *real* null.

    ``distance`` has shape ``(L,)`` (or is a scalar); ``null_distances`` is ``(S,)`` (one null
    shared by all) or ``(L, S)`` (one null per entry). A score of +1 means one IQR farther
    apart than the null's median. A null without spread (all samples equal: the released
    code's copies of the pair) is refused, since no score can be read against it.
    """
    d = torch.as_tensor(distance, dtype=torch.float64)
    nulls = torch.as_tensor(null_distances)
    if nulls.ndim not in (1, 2) or nulls.shape[-1] < 2:
        raise ValueError(
            f"null_distances must be (S,) or (L, S) with at least 2 samples (S >= 2), got shape "
            f"{tuple(nulls.shape)}."
        )
    if nulls.ndim == 2 and d.ndim >= 1 and d.shape[0] != nulls.shape[0]:
        raise ValueError(
            f"{d.shape[0]} distances but {nulls.shape[0]} nulls: with one null per entry, "
            "give one row of null distances per distance."
        )
    centre, spread = robust_centre_spread(null_distances)
    if (spread <= 0).any():
        raise ValueError(
            "The empirical null has zero spread (all its distances are equal), so it "
            "cannot scale a score; this is the released E-DIEM's defect. Use a null "
            "with variation: the distances of all layers or of rotated updates."
        )
    return (d - centre) / spread
