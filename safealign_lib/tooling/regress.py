"""Regression runs: compare a course run's metrics with a baseline, key by key.

A baseline (``baselines/<profile>.json``) is made from a run by ``safealign course regress
--update``. It holds, per notebook, the keys the notebook contract names for the profile
(:mod:`safealign_lib.course.contract`, the one place for keys: the required keys plus the
headline keys, which every run must have recorded) and the other keys the run recorded
(``"contract": false``); timing keys (:func:`~safealign_lib.course.contract.is_timing`) are
never compared, nor are the keys that measure rounding noise (``contract.NOISE_KEYS``: the
baseline lists them under ``left_out`` with the reason and their measured spread). Each key is
``{"value", "abs", "rel", "how", "contract"}``. A key passes when

    |now - value| <= abs + rel * |value|

(numpy's ``isclose`` rule). Both directions fail: the course is deterministic (same seeds, same
machine, same metrics; ``tests/test_regress.py``), so an unexplained improvement is a change to
understand too. A baseline key the run lacks fails; a key the run has and the baseline lacks is
reported as ``new`` and passes (notebooks gain keys; ``--update`` adopts them).

Tolerance rule (:func:`tolerance`), written into each key's ``how``. ``r`` is the measured rerun
spread: the largest |difference| between the runs the baseline was made from (``--rerun``; 0
with one run). ``n`` is the notebook's ``n_seeds`` (1 when absent). ``f = 2 / n_eval`` of the
profile is the resolution floor of a rate: two greedy answers of the smallest evaluation set
flipping (floating-point rounding differs between machines and flips single greedy answers).

1. counts, settings and verdicts (``n_*``, ``k_*``, ``r_s``, ``verdict_*``, the verdicts'
   ``criterion_*`` settings, ...): exact,
   ``abs = 2r`` (0 for a deterministic run).
2. float-rounding errors (``*_abs_err``): ``abs = max(2r, 1e-4)``, the float32 rounding level
   (the contract's invariance bound).
3. a seed mean with its per-seed sd recorded (``<key>_sd``): ``abs = max(f, 2r, 2 sd/√n)``,
   two standard errors of the mean over seeds.
4. the per-seed sd itself: ``abs = max(f, 2r, 2 sd/√(2(n−1)))``, two standard errors of a
   sample sd (normal approximation).
5. other rates, probabilities and scores in [0, 1] (names with rate, prob, utility, acc, auarc,
   agreement, cos): ``abs = max(f, 2r)``.
6. anything else (spreads, variance ratios, drifts, errors of broken modules):
   ``abs = 2r``, ``rel = 0.05``.

The metrics file's ``_provenance`` (commit, versions, organism hash, profile, parameters) is
copied into the baseline; a comparison prints what differs but never fails on it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from safealign_lib.config import REPO_ROOT
from safealign_lib.course import contract, metrics_io
from safealign_lib.tooling import provenance

BASELINE_DIR = REPO_ROOT / "baselines" if REPO_ROOT is not None else None  # smoke.json, cpu.json
FORMAT = 1
ROUNDING_FLOOR = 1e-4
CONTINUOUS_REL = 0.05
K_SE = 2.0  # standard errors allowed for seed-noise keys
_EXACT_PREFIXES = ("n_", "k_", "verdict_", "criterion_")
_EXACT_KEYS = ("r_s", "direction_layer", "addition_alpha")
_RATE_WORDS = ("rate", "prob", "utility", "acc", "auarc", "agreement", "cos")
FAILING = ("MOVED", "MISSING", "NOT FINITE")

AllMetrics = Mapping[str, Mapping[str, float]]


@dataclass(frozen=True)
class Tolerance:
    """How far a key may move: ``abs + rel * |baseline|``, and how that was derived."""

    abs: float
    rel: float
    how: str

    def allowed(self, value: float) -> float:
        """The largest |difference| that still passes for baseline ``value``."""
        return self.abs + self.rel * abs(value)


@dataclass(frozen=True)
class Row:
    """One compared key: its baseline and current value, the allowed move and the verdict."""

    notebook: str
    key: str
    baseline: float | None
    now: float | None
    allowed: float | None
    verdict: str

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING


def baseline_keys(profile: str) -> dict[str, tuple[str, ...]]:
    """Per notebook, the keys a baseline of ``profile`` holds: the contract's required keys for
    that profile plus its headline keys, without timing keys and rounding noise."""
    from safealign_lib.course.profiles import get_profile

    p = get_profile(profile)
    out = {}
    for num, c in contract.CONTRACTS.items():
        # the per-seed keys of the profile's own seeds (cpu: 0, 1, 2; the contract's default: 0, 1)
        keys = dict.fromkeys(c.required_keys(not p.network, p.seeds, p.verdict_seeds) + c.headlines)
        out[num] = tuple(k for k in keys if _compared(num, k))
    return out


def _compared(notebook: str, key: str) -> bool:
    """Whether a baseline holds ``key``: every recorded key but timings and rounding noise."""
    return not contract.is_timing(key) and not contract.is_noise(notebook, key)


def tolerance(
    key: str, metrics: Mapping[str, float], spread: float, rate_floor: float, runs: int = 2
) -> Tolerance:
    """The tolerance of ``key`` under the module's rule, given the notebook's ``metrics`` (for
    ``n_seeds`` and ``<key>_sd``), the rerun ``spread`` measured over ``runs`` runs and the
    profile's rate floor."""
    n = max(int(metrics.get("n_seeds", 1)), 1)
    r = 2 * spread
    if runs < 2:  # nothing to measure: the course repeats exactly (tests/test_regress.py)
        rerun = "rerun spread 0 (one run; same seeds repeat exactly)"
    else:
        rerun = f"rerun spread {spread:.3g} over {runs} runs"
    if key.startswith(_EXACT_PREFIXES) or key in _EXACT_KEYS:
        return Tolerance(r, 0.0, f"count/setting/verdict: exact; 2 x {rerun}")
    if key.endswith("_abs_err"):
        return Tolerance(max(r, ROUNDING_FLOOR), 0.0, f"float rounding: 1e-4 floor; 2 x {rerun}")
    if key.endswith("_sd") and n > 1:
        se = K_SE * metrics[key] / math.sqrt(2 * (n - 1))
        how = f"2 x SE of a sample sd ({metrics[key]:.3g}/sqrt(2x{n - 1}) x 2 = {se:.3g})"
        return Tolerance(max(rate_floor, r, se), 0.0, f"{how}; floor {rate_floor:.3g}; 2 x {rerun}")
    if f"{key}_sd" in metrics and n > 1:
        sd = metrics[f"{key}_sd"]
        se = K_SE * sd / math.sqrt(n)
        how = f"2 x per-seed sd {sd:.3g} / sqrt({n}) from {key}_sd (= {se:.3g})"
        return Tolerance(max(rate_floor, r, se), 0.0, f"{how}; floor {rate_floor:.3g}; 2 x {rerun}")
    if any(w in key for w in _RATE_WORDS):
        return Tolerance(
            max(rate_floor, r), 0.0, f"rate: floor {rate_floor:.3g} (2/n_eval); 2 x {rerun}"
        )
    return Tolerance(r, CONTINUOUS_REL, f"continuous: 5% relative; 2 x {rerun}")


def combine(paths: Sequence[str | Path]) -> tuple[dict[str, dict[str, float]], dict[str, dict]]:
    """Metrics and provenance of several metrics files, later files replacing whole notebook
    entries of earlier ones (a newer run of some notebooks over an older full run)."""
    metrics: dict[str, dict[str, float]] = {}
    prov: dict[str, dict] = {}
    for p in paths:
        m = metrics_io.load(p, must_exist=True)
        pv = metrics_io.load_provenance(p)
        for num, values in m.items():
            metrics[num] = dict(values)
            prov.pop(num, None)
            if num in pv:
                prov[num] = pv[num]
    return metrics, prov


def make_baseline(
    runs: Sequence[AllMetrics],
    profile: str,
    provenance_of_run: Mapping[str, dict] | None = None,
    sources: Sequence[str] = (),
    partial: bool = False,
) -> dict:
    """A baseline from ``runs`` of ``profile`` (the first gives the values, all that have a key
    its rerun spread). Raises ``ValueError`` naming every contract key (or notebook) the first
    run lacks, unless ``partial``: then those are left out and listed under ``left_out``."""
    from safealign_lib.course.profiles import get_profile

    if not runs:
        raise ValueError("make_baseline needs at least one run's metrics.")
    floor = 2 / get_profile(profile).n_eval
    first, problems, notebooks, noise = runs[0], [], {}, []
    for num, keys in baseline_keys(profile).items():
        if num not in first:  # e.g. a run of `--only 00 01`: needs --partial
            problems.append(f"{num} (no metrics)")
            continue
        entry = {}
        # beside the contract's keys, the other non-timing keys the notebook recorded (e.g. the
        # wrong-sign module's invariance error): a key that vanishes or moves is a change too
        recorded = [k for k in first[num] if k not in keys and _compared(num, k)]
        # rounding noise is left out with its reason (contract.NOISE_KEYS) and measured spread
        for key in (k for k in first[num] if contract.is_noise(num, k)):
            values = [run[num][key] for run in runs if num in run and key in run[num]]
            spread = max(abs(v - values[0]) for v in values)
            why = contract.NOISE_KEYS[f"{num}:{key}"]
            noise.append(
                f"{num}:{key} (noise: {why}; spread over these {len(values)} runs {spread:.3g})"
            )
        for key in (*keys, *recorded):
            if key not in first[num]:
                problems.append(f"{num}:{key}")
                continue
            # a rerun from before the key existed measures nothing for it ("over N runs")
            values = [run[num][key] for run in runs if num in run and key in run[num]]
            if not all(math.isfinite(v) for v in values):
                problems.append(f"{num}:{key} (not finite)")
                continue
            spread = max(abs(v - values[0]) for v in values)
            tol = tolerance(key, first[num], spread, floor, len(values))
            entry[key] = {"value": values[0], "abs": tol.abs, "rel": tol.rel, "how": tol.how}
            entry[key]["contract"] = key in keys
        notebooks[num] = entry
    if problems and not partial:
        raise ValueError(
            f"The metrics lack contract key(s) {problems}; rerun those notebooks "
            f"(`safealign course run --profile {profile} --only NN`) before making a baseline, "
            "or pass --partial to leave them out."
        )
    if not notebooks:
        raise ValueError("The metrics hold no notebook of the contract; is it a metrics file?")
    return {
        "format": FORMAT,
        "profile": profile,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": len(runs),
        "sources": list(sources),
        "rule": "pass when |now - value| <= abs + rel * |value|; see safealign_lib/course/"
        "regress.py for how abs and rel are derived",
        "provenance": dict(provenance_of_run or {}),
        "left_out": problems + noise,
        "notebooks": notebooks,
    }


def write_baseline(path: str | Path, baseline: Mapping, overwrite: bool = False) -> Path:
    """Write ``baseline`` as JSON; an existing file is replaced only with ``overwrite``."""
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise FileExistsError(
            f"{p} already exists; pass --update to replace it with the new baseline."
        )
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(baseline, indent=1) + "\n")
    return p


def load_baseline(path: str | Path) -> dict:
    """A baseline written by :func:`write_baseline`; ``ValueError`` for anything else."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"No baseline at {p}; make one from a run with `safealign course regress "
            f"--baseline {p} --update`."
        )
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{p} is not valid JSON ({err}); regenerate it with --update.") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or "notebooks" not in data:
        raise ValueError(f"{p} is not a baseline of format {FORMAT}; regenerate it with --update.")
    for num, entry in data["notebooks"].items():
        for key, spec in entry.items():
            nums = [spec.get(f) for f in ("value", "abs", "rel")]
            if not all(isinstance(x, int | float) and math.isfinite(x) for x in nums):
                raise ValueError(
                    f"{p}: {num}:{key} needs finite value, abs and rel; regenerate with --update."
                )
    return data


def compare(
    baseline: Mapping, metrics: AllMetrics, notebooks: Sequence[str] | None = None
) -> list[Row]:
    """One :class:`Row` per baseline key (and per new non-timing key of the run), for the
    baseline's notebooks (or only ``notebooks``)."""
    wanted = {f"{int(n):02d}" for n in notebooks} if notebooks else None
    rows = []
    # a notebook the baseline lacks has only new keys
    entries = {**dict.fromkeys(metrics, {}), **baseline["notebooks"]}
    for num, entry in sorted(entries.items()):
        if wanted is not None and num not in wanted:
            continue
        now_nb = metrics.get(num, {})
        for key, spec in entry.items():
            base = spec["value"]
            allowed = Tolerance(spec["abs"], spec["rel"], "").allowed(base)
            now = now_nb.get(key)
            if now is None:
                verdict = "MISSING"
            elif not math.isfinite(now):
                verdict = "NOT FINITE"
            else:
                verdict = "ok" if abs(now - base) <= allowed else "MOVED"
            rows.append(Row(num, key, base, now, allowed, verdict))
        for key in sorted(set(now_nb) - set(entry)):
            if _compared(num, key):
                rows.append(Row(num, key, None, now_nb[key], None, "new"))
    return rows


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(rows: Sequence[Row], show_all: bool = False) -> str:
    """What moved (every row with ``show_all``) and a one-line summary."""
    shown = [r for r in rows if show_all or r.verdict != "ok"]
    lines = []
    if shown:
        lines.append(f"{'key':<52} {'baseline':>10} {'now':>10} {'tolerance':>10}  verdict")
        for r in shown:
            tol = "-" if r.allowed is None else f"±{r.allowed:.3g}"
            key = f"{r.notebook}:{r.key}"
            line = f"{key:<52} {_fmt(r.baseline):>10} {_fmt(r.now):>10} {tol:>10}  {r.verdict}"
            lines.append(line)
    counts = {v: sum(r.verdict == v for r in rows) for v in ("ok", *FAILING, "new")}
    compared = len(rows) - counts["new"]
    lines.append(
        f"{compared} keys compared: "
        + ", ".join(f"{n} {v.lower()}" for v, n in counts.items() if n or v == "ok")
    )
    return "\n".join(lines)


def provenance_changes(
    baseline: Mapping, run_provenance: Mapping[str, dict], notebooks: set[str]
) -> list[str]:
    """``"NN field: old -> new"`` for what differs between the baseline's runs and this one,
    for ``notebooks``."""
    out = []
    for num, old in sorted(baseline.get("provenance", {}).items()):
        if num not in notebooks:
            continue
        new = run_provenance.get(num)
        if new is None:
            out.append(f"{num}: no provenance recorded for this run")
            continue
        out += [f"{num} {d}" for d in provenance.differences(old, new)]
    return out


def run(
    baseline_path: str | Path,
    metrics_paths: Sequence[str | Path] = (),
    update: bool = False,
    reruns: Sequence[str | Path] = (),
    profile: str | None = None,
    notebooks: Sequence[str] | None = None,
    show_all: bool = False,
    partial: bool = False,
) -> int:
    """``safealign course regress``: compare (exit status 1 on a failure) or, with ``update``,
    write a new baseline from the metrics (and ``reruns``, which measure the rerun spread)."""
    paths = list(metrics_paths) or [metrics_io.metrics_path()]
    metrics, prov = combine(paths)
    if update:
        profiles = {str(p.get("profile")) for p in prov.values()}
        if profile is None and len(profiles) != 1:
            raise ValueError(
                f"Cannot tell the metrics' profile from their provenance ({sorted(profiles)}); "
                "give it with --profile."
            )
        if profile is not None and profiles and profiles != {profile}:
            raise ValueError(
                f"--profile {profile} but the metrics come from {sorted(profiles)}; a baseline "
                "takes its tolerances from its own profile's run."
            )
        profile = profile or profiles.pop()
        runs = [metrics] + [combine([r])[0] for r in reruns]
        sources = [str(p) for p in [*paths, *reruns]]
        base = make_baseline(runs, profile, prov, sources, partial)
        out = write_baseline(baseline_path, base, overwrite=True)
        n = sum(len(v) for v in base["notebooks"].values())
        print(f"wrote {out}: {n} keys of notebooks {', '.join(base['notebooks'])} ({profile})")
        if base["left_out"]:
            print(f"left out (the metrics lack them): {', '.join(base['left_out'])}")
        return 0
    baseline = load_baseline(baseline_path)
    rows = compare(baseline, metrics, notebooks)
    print(format_table(rows, show_all))
    other = sorted({str(p.get("profile")) for p in prov.values()} - {baseline["profile"]})
    if other:  # the usual cause of a wall of MOVED rows
        print(
            f"warning: the metrics come from profile(s) {other}, the baseline from "
            f"{baseline['profile']!r}"
        )
    for line in provenance_changes(baseline, prov, {r.notebook for r in rows}):
        print(f"provenance (not compared): {line}")
    missing = [k for k in baseline.get("left_out", []) if "(noise:" not in k]
    if missing:
        print(
            f"note: the baseline lacks {len(missing)} contract key(s) its runs did "
            "not record (its left_out list); regenerate it with --update after a full run."
        )
    return 1 if any(r.failed for r in rows) else 0
