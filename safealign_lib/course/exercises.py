"""Check functions for the notebooks' exercises.

Each ``check_*`` takes the learner's function, runs it on fixed cases against the library's
reference, prints a clear PASS or FAIL (with the first mismatch) and returns True/False.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from safealign_lib.evaluation.criterion import paired_t
from safealign_lib.evaluation.judges import GCG_KEYWORDS, KeywordJudge


def _report(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'}: {name}" + (f" — {detail}" if detail else ""))
    return ok


def _mean_sd(values: list[float]) -> tuple[float, float]:
    """The reference of notebook 01's optional exercise: mean and sample sd (ddof = 1)."""
    return float(np.mean(values)), float(np.std(values, ddof=1))


# the library's answer to each optional exercise, for the cells after it (see :func:`optional`)
REFERENCES: dict[str, Callable] = {"mean_sd": _mean_sd, "paired_t": paired_t}


def optional(fn: Callable) -> Callable:
    """The learner's ``fn`` for an optional exercise, or the library's reference while ``fn`` is
    still the stub (it raises ``NotImplementedError``): the cells after an optional exercise run
    either way, and say once which one they used."""
    reference = REFERENCES.get(fn.__name__)
    if reference is None:
        raise KeyError(
            f"No optional exercise is called {fn.__name__!r}; known: {list(REFERENCES)}."
        )
    said = []

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            if not said:
                print(
                    f"{fn.__name__} is not written yet (an optional exercise): this cell uses "
                    "the library's reference instead."
                )
                said.append(True)
            return reference(*args, **kwargs)

    return call


@contextmanager
def unless_unwritten() -> Iterator[None]:
    """Run the block, or skip the rest of it with one line while the learner's exercise function
    it calls is still the stub (it raises ``NotImplementedError``): a cell that only shows the
    learner's function on real data never stops Run All before the long runs after it."""
    try:
        yield
    except NotImplementedError as err:
        print(f"skipped: your exercise function is not written yet ({err}); the cells below run.")


JUDGE_CASES = [
    "I'm sorry, but I can't help with that.",
    "Sure, here is how to bake bread: Step 1: mix.",
    "As an AI assistant, I cannot support this request.",
    "Here is a guide. Note that this is illegal in some places.",  # keyword fires inside compliance
    "I can\u2019t provide instructions for that.",  # typographic apostrophe
    "i'm sorry",  # lower case: the GCG list is case-sensitive
    "Of course! Step 1: [redacted].",
    "",
]


def check_keyword_judge(fn: Callable[[str, tuple[str, ...]], bool]) -> bool:
    """``fn(response, keywords) -> bool`` must match the GCG keyword judge (case-sensitive
    substring match, typographic apostrophes normalised)."""
    ref = KeywordJudge("gcg")
    for r in JUDGE_CASES:
        try:
            got = bool(fn(r, GCG_KEYWORDS))
        except Exception as err:  # show the learner's error instead of a traceback
            return _report("keyword judge", False, f"raised {type(err).__name__}: {err} on {r!r}")
        want = ref([""], [r])[0]
        if got != want:
            return _report("keyword judge", False, f"on {r!r} expected refused={want}, got {got}")
    return _report("keyword judge", True, f"{len(JUDGE_CASES)} cases agree with the library")


def check_first_token_prob(fn: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> bool:
    """``fn(last_logits (batch, vocab), refusal_ids) -> (batch,)`` probability mass on the ids."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    ids = [3, 7, 11]
    want = logits.softmax(-1)[:, ids].sum(-1)
    try:
        got = torch.as_tensor(fn(logits.clone(), ids), dtype=torch.float32).reshape(-1)
    except Exception as err:
        return _report(
            "first-token refusal probability", False, f"raised {type(err).__name__}: {err}"
        )
    if got.shape != want.shape:
        return _report(
            "first-token refusal probability",
            False,
            f"shape {tuple(got.shape)}, expected {tuple(want.shape)}",
        )
    if not torch.allclose(got, want, atol=1e-5):
        i = int((got - want).abs().argmax())
        hint = ""
        if torch.allclose(got, logits.softmax(0)[:, ids].sum(-1), atol=1e-5):
            hint = " (that softmax runs over the batch, dim=0; take it over the vocabulary, dim=-1)"
        elif got.max() > 1 + 1e-5 or got.min() < 0:  # not a probability mass at all
            hint = " (did you take softmax over the vocabulary, dim=-1?)"
        return _report(
            "first-token refusal probability",
            False,
            f"row {i}: got {got[i]:.4f}, expected {want[i]:.4f}{hint}",
        )
    return _report(
        "first-token refusal probability", True, "matches softmax mass on the refusal tokens"
    )


def check_mean_sd(fn: Callable[[list[float]], tuple[float, float]]) -> bool:
    """``fn(values) -> (mean, sd)`` with the sample standard deviation (ddof = 1)."""
    cases = [[0.2, 0.4, 0.9], [1.0, 1.0, 1.0], [0.0, 1.0]]
    for c in cases:
        try:
            m, s = (float(x) for x in fn(list(c)))
        except Exception as err:  # show the learner's error instead of a traceback
            return _report("mean ± sd", False, f"raised {type(err).__name__}: {err} on {c}")
        if not (np.isclose(m, np.mean(c)) and np.isclose(s, np.std(c, ddof=1))):
            return _report(
                "mean ± sd",
                False,
                f"on {c} expected ({np.mean(c):.4f}, {np.std(c, ddof=1):.4f}), "
                f"got ({m:.4f}, {s:.4f}); sd over seeds uses ddof=1",
            )
    return _report("mean ± sd", True)


# --- notebook 04: DIEM ------------------------------------------------------------------------


def _diem_cases() -> list[tuple[torch.Tensor, torch.Tensor, float, float]]:
    g = torch.Generator().manual_seed(4)
    cases = []
    for shape, lo, hi in (((16,), 0.0, 1.0), ((5, 64), -2.0, 3.0), ((3, 4, 256), 0.5, 0.75)):
        a = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
        b = torch.rand(shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
        b.reshape(-1, shape[-1])[0] = a.reshape(-1, shape[-1])[
            0
        ]  # one identical pair: DIEM's minimum
        cases.append((a, b, lo, hi))
    return cases


def check_diem(fn: Callable) -> bool:
    """``fn(a, b, v_min, v_max, null) -> DIEM`` along the last axis (batches broadcast), where
    ``null`` is a :class:`~safealign_lib.methods.diem.DiemNull` (``.center`` = E[d], ``.variance`` =
    Var(d)); compared with :func:`safealign_lib.methods.diem.diem` on three ranges and shapes."""
    from safealign_lib.methods.diem import diem, diem_null

    for a, b, lo, hi in _diem_cases():
        null = diem_null(a.shape[-1], lo, hi, method="closed_form")
        want = diem(a, b, lo, hi, null=null)
        where = f"n={a.shape[-1]}, range [{lo}, {hi}], shape {tuple(a.shape)}"
        try:
            got = torch.as_tensor(fn(a.clone(), b.clone(), lo, hi, null), dtype=torch.float64)
        except Exception as err:
            return _report("DIEM", False, f"raised {type(err).__name__}: {err} ({where})")
        if got.shape != want.shape:
            return _report(
                "DIEM",
                False,
                f"shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                f"({where}); reduce over the last axis only",
            )
        if not torch.allclose(got, want, rtol=1e-6, atol=1e-6):
            i = int((got - want).abs().reshape(-1).argmax())
            g_i, w_i = float(got.reshape(-1)[i]), float(want.reshape(-1)[i])
            hint = ""
            if abs(g_i * (hi - lo) - w_i) < 1e-6 * max(1.0, abs(w_i)):
                hint = " (multiply by the range v_max - v_min)"
            elif abs(g_i * np.sqrt(null.variance) / null.variance - w_i) < 1e-6 * max(
                1.0, abs(w_i)
            ):
                hint = " (divide by the variance, not the standard deviation)"
            return _report("DIEM", False, f"{where}: got {g_i:.4f}, expected {w_i:.4f}{hint}")
    return _report(
        "DIEM", True, "agrees with safealign_lib.methods.diem.diem on 3 ranges and batch shapes"
    )


def check_diem_null(fn: Callable) -> bool:
    """``fn(n, v_min, v_max, n_pairs, seed) -> (center, variance)`` of the distance between two
    random vectors with i.i.d. components uniform on ``[v_min, v_max]``, by Monte Carlo.

    Compared with the library's Monte Carlo (:func:`safealign_lib.methods.diem.diem_null`) within
    sampling error: the centre within 2% and the variance within 15% (both estimates here have
    relative standard errors below 1.5%). Mean or median as the centre both pass.
    """
    from safealign_lib.methods.diem import diem_null

    n_pairs = 20_000
    for n, lo, hi in ((4, 0.0, 1.0), (256, -2.0, 3.0), (1024, 0.5, 0.75)):
        want = diem_null(n, lo, hi, n_pairs=n_pairs, seed=0)
        where = f"n={n}, range [{lo}, {hi}]"
        try:
            c, v = (float(x) for x in fn(n, lo, hi, n_pairs, 1))
        except Exception as err:
            return _report("DIEM null", False, f"raised {type(err).__name__}: {err} ({where})")
        if not (np.isfinite(c) and np.isfinite(v)):
            return _report(
                "DIEM null",
                False,
                f"{where}: got centre {c}, variance {v}; expected finite numbers",
            )
        if abs(c - want.center) > 0.02 * want.center:
            return _report(
                "DIEM null",
                False,
                f"{where}: centre {c:.4f}, expected about {want.center:.4f} "
                "(the distance between two vectors drawn uniformly on [v_min, v_max]?)",
            )
        if abs(v - want.variance) > 0.15 * want.variance:
            hint = (
                " (the variance, not the standard deviation)"
                if abs(v**2 - want.variance) < 0.15 * want.variance
                else ""
            )
            return _report(
                "DIEM null",
                False,
                f"{where}: variance {v:.5f}, expected about {want.variance:.5f}{hint}",
            )
    return _report("DIEM null", True, "centre and variance agree with the library's Monte Carlo")


# --- notebook 02: linear probes and the refusal direction ---------------------------------------


def _diff_in_means_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2)
    cases = []
    for n_layers, y in ((3, [1, 1, 0, 0, 0, 1, 0]), (2, [0, 0, 0, 0, 1]), (1, [1, 0])):
        y = np.array(y)
        feats = (
            rng.normal(size=(n_layers, len(y), 6)) + 3.0
        )  # an offset: harmful and harmless means differ from 0
        feats[:, y == 1] += rng.normal(size=(n_layers, 1, 6))
        cases.append((feats.astype(np.float32), y))
    return cases


def check_diff_in_means(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> bool:
    """``fn(features (n_layers, n, d), labels (n,) with 1 = harmful) -> (n_layers, d)``: per layer,
    mean of the harmful examples minus mean of the harmless ones (not normalised); compared with
    :func:`safealign_lib.interp.refusal_direction.refusal_directions` on unbalanced classes."""
    name = "difference-in-means direction"
    for feats, y in _diff_in_means_cases():
        want = feats[:, y == 1].astype(np.float64).mean(1) - feats[:, y == 0].astype(
            np.float64
        ).mean(1)
        where = (
            f"{feats.shape[0]} layer(s), {int(y.sum())} harmful + {int((y == 0).sum())} harmless"
        )
        try:
            got = np.asarray(fn(feats.copy(), y.copy()), dtype=np.float64)
        except Exception as err:
            return _report(name, False, f"raised {type(err).__name__}: {err} ({where})")
        if got.shape != want.shape:
            return _report(
                name,
                False,
                f"shape {got.shape}, expected {want.shape} ({where}): one direction "
                "per layer, so average over the examples axis (axis 1)",
            )
        if not np.allclose(got, want, atol=1e-4):
            hint = ""
            if np.allclose(got, -want, atol=1e-4):
                hint = " (the sign: harmful minus harmless)"
            elif np.allclose(got, want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-4):
                hint = " (return r itself, not r / ||r||)"
            elif np.allclose(got, feats[:, y == 1].mean(1) - feats.mean(1), atol=1e-4):
                hint = " (subtract the harmless mean, not the mean of all examples)"
            err = float(np.abs(got - want).max())
            return _report(
                name,
                False,
                f"{where}: max abs difference {err:.4f} from the expected direction{hint}",
            )
    return _report(
        name, True, "agrees with safealign_lib.interp.refusal_direction.refusal_directions"
    )


# --- notebook 05: reliability ------------------------------------------------------------------


def check_auarc(fn: Callable) -> bool:
    """``fn(uncertainty, utility) -> float``: the area under the accuracy-rejection curve, i.e. the
    mean over k = 1..N of the mean utility of the k most certain answers; compared with
    :func:`safealign_lib.evaluation.reliability.auarc` on cases without tied uncertainties."""
    from safealign_lib.evaluation.reliability import auarc

    rng = np.random.default_rng(5)
    cases = [(np.array([0.1, 0.9, 0.5, 0.3]), np.array([1.0, 0.0, 0.0, 1.0]))]
    for n in (7, 50):
        u = rng.random(n) * 3
        cases.append((u, np.clip(1 - u / 3 + rng.normal(0, 0.3, n), 0, 1)))  # graded, like ROUGE-L
    for u, y in cases:
        want = auarc(u, y)
        try:
            got = float(fn(u.copy(), y.copy()))
        except Exception as err:
            return _report("AUARC", False, f"raised {type(err).__name__}: {err} (N={len(u)})")
        if not np.isclose(got, want, atol=1e-9):
            hint = ""
            if np.isclose(got, auarc(-u, y), atol=1e-9):
                hint = (
                    " (that is the curve of the *least* certain answers first: "
                    "sort by increasing uncertainty)"
                )
            return _report("AUARC", False, f"N={len(u)}: got {got:.4f}, expected {want:.4f}{hint}")
    return _report("AUARC", True, "agrees with safealign_lib.evaluation.reliability.auarc")


# --- notebook 03: SaLoRA's safety module -------------------------------------------------------


def _safety_module_cases() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(W (d_out, d_in), X (n_tokens, d_in), r_s): W·Xᵀ with a clear spectral gap after r_s, and
    features with a large common offset (as real activations have), so that centring them
    changes the answer."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for d_out, d_in, n, r_s in ((10, 8, 40, 3), (12, 12, 30, 4), (6, 9, 25, 1)):
        scales = torch.cat([torch.linspace(16.0, 10.0, r_s), torch.linspace(1.0, 0.2, d_in - r_s)])
        basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64)).Q
        X = (torch.randn(n, d_in, generator=g, dtype=torch.float64) * scales) @ basis.T
        X = X + 2.0 * torch.randn(1, d_in, generator=g, dtype=torch.float64)
        W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / d_in**0.5
        cases.append((W, X, r_s))
    return cases


def _projector_onto_complement(M: torch.Tensor, r: int) -> torch.Tensor:
    U = torch.linalg.svd(M, full_matrices=False).U[:, :r]
    return torch.eye(M.shape[0], dtype=M.dtype) - U @ U.T


def check_safety_module(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> bool:
    """``fn(W (d_out, d_in), X (n_tokens, d_in), r_s) -> C (d_out, d_out)``, X one row per token:
    SaLoRA's fixed safety module C = I - U_C U_Cᵀ, U_C the top-``r_s`` left singular vectors of
    W·Xᵀ (not centred). Checks the projector properties (symmetric, C·C = C, trace = d_out - r_s)
    and that C removes exactly the top-r_s output subspace (C·U_C = 0, C·v = v for v ⟂ U_C)."""
    name = "safety module C"
    for W, X, r_s in _safety_module_cases():
        d_out = W.shape[0]
        where = f"W {tuple(W.shape)}, X {tuple(X.shape)}, r_s={r_s}"
        try:
            got = (
                torch.as_tensor(fn(W.float().clone(), X.float().clone(), r_s))
                .detach()
                .double()
                .cpu()
            )
        except Exception as err:
            return _report(name, False, f"raised {type(err).__name__}: {err} ({where})")
        if got.shape != (d_out, d_out):
            return _report(
                name,
                False,
                f"shape {tuple(got.shape)}, expected {(d_out, d_out)} ({where}): C acts on "
                "the layer's outputs, so it is d_out x d_out (left singular vectors of W·Xᵀ)",
            )
        if not torch.allclose(got, got.T, atol=1e-4):
            return _report(
                name,
                False,
                f"C is not symmetric ({where}): an orthogonal projector is I - U Uᵀ "
                "with U's columns orthonormal",
            )
        if not torch.allclose(got @ got, got, atol=1e-4):
            return _report(
                name,
                False,
                f"C·C != C ({where}): not a projector; build it from orthonormal "
                "singular vectors, not from W·Xᵀ itself",
            )
        U = torch.linalg.svd(W @ X.T, full_matrices=False).U[:, :r_s]
        rest = torch.eye(d_out, dtype=torch.float64) - U @ U.T
        trace = float(torch.trace(got))
        if abs(trace - (d_out - r_s)) > 1e-3:
            hint = ""
            if abs(trace - r_s) < 1e-3 and torch.allclose(got, U @ U.T, atol=1e-4):
                hint = (
                    " (wrong sign: U_C U_Cᵀ keeps only the safety subspace instead of removing it"
                    " — the bug "
                    "of SaLoRA's first public commit)"
                )
            return _report(
                name,
                False,
                f"trace(C) = rank(C) = {trace:.3f}, expected d_out - r_s = {d_out - r_s} "
                f"({where}){hint}",
            )
        if not torch.allclose(got, rest, atol=1e-4):
            hint = ""
            Xc = X - X.mean(0, keepdim=True)
            if torch.allclose(got, _projector_onto_complement(W @ Xc.T, r_s), atol=1e-4):
                hint = " (do not centre the features: SaLoRA uses the SVD of W·X as it is)"
            elif W.shape[0] == W.shape[1] and torch.allclose(
                got, _projector_onto_complement(X.T, r_s), atol=1e-4
            ):
                hint = " (that is the subspace of the inputs X; C protects the layer's outputs W·X)"
            elif torch.allclose(got, _projector_onto_complement(W, r_s), atol=1e-4):
                hint = (
                    " (that is the top subspace of W alone; weight it by the safety features: W·Xᵀ)"
                )
            err = float((got @ U).abs().max())
            return _report(
                name,
                False,
                f"C does not remove the top-{r_s} output subspace of W·Xᵀ: "
                f"max |C·U_C| = {err:.3f} ({where}){hint}",
            )
    return _report(
        name, True, "symmetric, idempotent, rank d_out - r_s, and C·U_C = 0 on every case"
    )


# (control, treated, the typical mistake the case catches); the expected answer is the
# library's :func:`~safealign_lib.evaluation.criterion.paired_t`
PAIRED_T_CASES = [
    ([0.3, 0.5, 0.2, 0.4], [0.1, 0.3, 0.0, 0.3], "pair by position: an unpaired test misses this"),
    ([0.5, 0.6, 0.3], [0.3, 0.2, 0.3], "the sample sd (ddof=1), not the population sd"),
    ([0.4, 0.5, 0.3], [0.2, 0.4, 0.0], "Student's t with n - 1 degrees of freedom, not a normal"),
    ([0.4, 0.5, 0.3], [0.6, 0.7, 0.4], "one-sided: the p-value of 'treated is lower'"),
    ([0.5, 0.75, 0.25], [0.25, 0.5, 0.0], "zero spread: the sign decides (p 0), no division by 0"),
    ([0.4], [0.0], "one pair: no standard error, t is NaN and p is 0.5"),
]


def _same(a: float, b: float) -> bool:
    if np.isnan(b):
        return bool(np.isnan(a))
    if np.isinf(b):
        return bool(a == b)
    return bool(abs(a - b) <= 1e-6)


def _paired_t_mistakes(control: list[float], treated: list[float]) -> dict[str, tuple]:
    """What the typical mistakes give on one case, by the hint that names each (the check's
    feedback says which mistake the learner's answer matches)."""
    from scipy import stats

    c, t = np.asarray(control, float), np.asarray(treated, float)
    d, n = t - c, len(c)
    if n < 2:
        return {}
    mean, out = float(d.mean()), {}

    def t_stat(se: float) -> float:
        return mean / se

    if d.std() > 0:
        tt = t_stat(d.std() / np.sqrt(n))
        out["the sample sd (ddof=1), not the population sd"] = (mean, tt, stats.t.cdf(tt, n - 1))
    unpaired_se = np.sqrt((c.var(ddof=1) + t.var(ddof=1)) / n)
    if unpaired_se > 0:
        tt = t_stat(unpaired_se)
        out["pair by position: an unpaired test misses this"] = (mean, tt, stats.t.cdf(tt, n - 1))
    if d.std(ddof=1) > 0:
        tt = t_stat(d.std(ddof=1) / np.sqrt(n))
        p = stats.t.cdf(tt, n - 1)
        out["Student's t with n - 1 degrees of freedom, not a normal"] = (
            mean,
            tt,
            stats.norm.cdf(tt),
        )
        out["one-sided: the p-value of 'treated is lower'"] = (mean, tt, 2 * min(p, 1 - p))
        out["the differences are treated - control"] = (-mean, -tt, 1 - p)
    return out


def check_paired_t(fn: Callable[[list[float], list[float]], tuple[float, float, float]]) -> bool:
    """``fn(control, treated) -> (mean, t, p_less)``: the paired differences treated − control,
    their mean, the t statistic (mean over sample sd / √n) and the one-sided p-value of
    "treated is lower" from Student's t with n − 1 degrees of freedom; with zero spread the sign
    of the mean decides (p 0 or 1, 0.5 for none); one pair gives t NaN and p 0.5."""
    import warnings

    for control, treated, why in PAIRED_T_CASES:
        want = paired_t(control, treated)
        try:
            # a standard error from one difference, or a zero one, warns with NaN or inf: as an
            # error here, so that a missing guard is caught, not hidden by a NaN comparison
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                got = tuple(float(x) for x in fn(list(control), list(treated)))
        except Exception as err:
            hint = " (guard one pair and zero spread)" * (len(control) == 1 or "zero" in why)
            return _report("paired t", False, f"raised {type(err).__name__}: {err}{hint}")
        if len(got) != 3 or not all(_same(g, w) for g, w in zip(got, want, strict=True)):
            shown = ", ".join(f"{x:.4g}" for x in want)
            matches = [
                hint
                for hint, wrong in _paired_t_mistakes(control, treated).items()
                if len(got) == 3 and all(_same(g, w) for g, w in zip(got, wrong, strict=True))
            ]
            why = matches[0] if matches else why
            return _report(
                "paired t",
                False,
                f"control {control}, treated {treated}: expected ({shown}), got {got} ({why})",
            )
    return _report("paired t", True, f"{len(PAIRED_T_CASES)} cases, incl. zero spread, one pair")


# --- notebook 06: what keeps safety ---------------------------------------------------------


def check_safety_mixer(fn: Callable) -> bool:
    """``fn(examples, refusals, seed) -> list``: every fine-tuning example and every refusal
    example once, in a seeded shuffled order (the same seed, the same order), never replacing
    fine-tuning examples and never leaving the refusals in one block at the end."""
    name = "safety-data mixer"
    examples = [f"task {i}" for i in range(40)]
    refusals = [f"refusal {i}" for i in range(8)]
    try:
        a = list(fn(list(examples), list(refusals), 0))
        b = list(fn(list(examples), list(refusals), 0))
        c = list(fn(list(examples), list(refusals), 1))
    except Exception as err:
        return _report(name, False, f"raised {type(err).__name__}: {err}")
    if sorted(a) != sorted(examples + refusals):
        return _report(
            name,
            False,
            f"{len(a)} items, expected {len(examples) + len(refusals)}: keep every fine-tuning "
            "example and add every refusal (mix in, do not replace)",
        )
    if a[-len(refusals) :] == refusals or a == examples + refusals:
        return _report(name, False, "the refusals sit in one block at the end: shuffle the mix")
    if a != b:
        return _report(name, False, "two calls with seed 0 gave different orders: seed the shuffle")
    if a == c:
        return _report(name, False, "seeds 0 and 1 gave the same order: use the seed")
    return _report(name, True, "every example once, seeded, mixed")


def check_token_weights(fn: Callable) -> bool:
    """``fn(logp, ref_logp, positions, beta, bias_factor, bias_length, first_token_factor) ->
    weights``: the constrained objective's per-token gradient weights 2(1 − σ(β_t Δ_t)) with
    Δ_t = logp − ref_logp and the released β schedule
    (:meth:`safealign_lib.adapters.constrained.Constraint.betas`), before clamping."""
    from safealign_lib.adapters.constrained import Constraint

    name = "token-wise constraint weights"
    logp = torch.tensor([-0.2, -0.5, -1.0, -0.3, -2.0, -0.1, -0.4])
    ref = torch.tensor([-1.0, -0.5, -0.2, -1.5, -1.0, -2.0, -0.1])
    positions = torch.arange(7)
    c = Constraint()
    betas = c.betas(positions)
    want = 2 * (1 - torch.sigmoid(betas * (logp - ref)))
    try:
        got = torch.as_tensor(
            fn(logp, ref, positions, c.beta, c.bias_factor, c.bias_length, c.first_token_factor),
            dtype=torch.float32,
        )
    except Exception as err:
        return _report(name, False, f"raised {type(err).__name__}: {err}")
    if got.shape != want.shape:
        return _report(name, False, f"shape {tuple(got.shape)}, expected one weight per token")
    if torch.allclose(got, want, atol=1e-5):
        return _report(name, True, "matches safealign_lib.adapters.constrained")
    hint = ""
    if torch.allclose(got, 2 * (1 - torch.sigmoid(betas * (ref - logp))), atol=1e-5):
        hint = " (the sign of Δ: the fine-tuned model's log-probability minus the reference's)"
    elif torch.allclose(got, 2 * (1 - torch.sigmoid(c.beta * (logp - ref))), atol=1e-5):
        hint = " (β is not constant: larger on the first bias_length tokens, and at token 0)"
    elif torch.allclose(got, 2 * torch.sigmoid(betas * (logp - ref)), atol=1e-5):
        hint = " (the weight is 2(1 − σ(βΔ)): a token the fine-tune already favours gets less)"
    err = float((got - want).abs().max())
    return _report(name, False, f"max abs difference {err:.4f}{hint}")


def check_threshold(fn: Callable) -> bool:
    """``fn(scores, labels, max_false_flags) -> threshold``: the lowest threshold t (among the
    benign scores) such that at most ``max_false_flags`` of the benign prompts (label 0) score
    above t; harmful prompts (label 1) play no part in it. Compared with
    :func:`safealign_lib.interp.conditional.choose_threshold`."""
    from safealign_lib.interp.conditional import choose_threshold

    name = "gate threshold"
    rng = np.random.default_rng(0)
    cases = []
    for n_b, n_h, q in ((50, 30, 0.02), (200, 10, 0.05), (10, 10, 0.0), (45, 40, 0.05)):
        scores = np.r_[rng.beta(2, 5, n_b), rng.beta(5, 2, n_h)]
        labels = np.r_[np.zeros(n_b), np.ones(n_h)]
        cases.append((scores, labels, q))
    for scores, labels, q in cases:
        want = choose_threshold(scores, labels, q)
        try:
            got = float(fn(scores.copy(), labels.copy(), q))
        except Exception as err:
            return _report(name, False, f"raised {type(err).__name__}: {err}")
        benign = scores[labels == 0]
        allowed = int(np.floor(q * len(benign)))
        if (benign > got).sum() > allowed:
            return _report(
                name,
                False,
                f"{int((benign > got).sum())} of {len(benign)} benign prompts flagged at "
                f"max_false_flags={q} (at most {allowed}): count benign prompts only, and floor",
            )
        if not np.isclose(got, want):
            return _report(
                name, False, f"threshold {got:.4f}, expected {want:.4f}: the lowest such threshold"
            )
    return _report(name, True, f"{len(cases)} cases agree with interp.conditional.choose_threshold")
