"""Two runs' metrics side by side, key by key: what an arithmetic change moved.

    .venv/bin/python bench/paired_metrics.py BEFORE/metrics.json AFTER/metrics.json

For a speed-up that changes the arithmetic (a different batch shape, a fused kernel), the
issue's rule is a paired comparison: the same seeds, before and after. This prints how many
numeric keys are identical, then a markdown table of every key that moved (before, after,
difference), smooth metrics (first-token refusal probability, utility, AUARC, KL) first.
Keys only one run has are counted, not compared.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SMOOTH = ("first_token", "utility", "auarc", "kl_", "entropy", "loss")


def numeric(metrics: dict) -> dict[str, float]:
    """``{"NN/key": value}`` for every numeric metric (booleans and strings left out)."""
    out = {}
    for nb, keys in metrics.items():
        if nb.startswith("_") or not isinstance(keys, dict):
            continue
        for k, v in keys.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{nb}/{k}"] = float(v)
    return out


def compare(before: dict, after: dict) -> tuple[list[tuple[str, float, float]], int, int]:
    """(the keys that moved with both values, smooth ones first; identical count; keys only
    one run has)."""
    b, a = numeric(before), numeric(after)
    shared = sorted(b.keys() & a.keys())
    same = [k for k in shared if b[k] == a[k] or (math.isnan(b[k]) and math.isnan(a[k]))]
    moved = [(k, b[k], a[k]) for k in shared if k not in same]
    moved.sort(key=lambda r: (not any(s in r[0] for s in SMOOTH), r[0]))
    return moved, len(same), len(b.keys() ^ a.keys())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    moved, same, unpaired = compare(
        json.loads(args.before.read_text()), json.loads(args.after.read_text())
    )
    print(f"{same} numeric keys identical, {len(moved)} moved, {unpaired} in one run only\n")
    if moved:
        print("| key | before | after | after - before |\n|---|---|---|---|")
        for k, b, a in moved:
            print(f"| {k} | {b:.6g} | {a:.6g} | {a - b:+.3g} |")


if __name__ == "__main__":
    main()
