"""How far the course is from this machine's arithmetic floor (issue 14).

    .venv/bin/python bench/flop_floor.py --run OUT/executed   # the executed notebooks of a
                                                               # `safealign course run --output OUT`

The floor of a notebook is the matrix arithmetic its logged tokens need, at the best fp32 GEMM
rate this machine reaches at the organism's own shapes, on all its cores:

- FLOPs per token, forward = 2 x the dense weights' multiply-adds per token (q, k, v, o, the
  MLP's three matrices, the tied output head; attention scores, norms and LoRA's rank-8
  products are left out; the output head is counted at every position, although training
  applies it only where a position has a target, so training's floor may be up to ~13% high);
- training = forward + the backward pass's input gradients = 2 x forward per token (the base
  weights are frozen: no weight gradients but LoRA's);
- generation and forward passes = forward per token processed (prompt and new tokens; the log
  counts padding too, so this is the floor of the course's own batching);
- GEMM rate: median GFLOP/s of ``torch.matmul`` on one thread at the organism's shapes with
  1,024 rows (a training batch, a prefill) and with 64 rows (one decoding step of a batch),
  weighted by each shape's share of the multiply-adds; the floor uses the 1,024-row rate times
  the number of cores.

Prints per notebook: logged tokens by kind, floor seconds, wall seconds and wall / floor.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safealign_lib import worklog  # noqa: E402
from safealign_lib.config import organism_dir  # noqa: E402
from safealign_lib.tooling.breakdown import notebook_times  # noqa: E402

# forward FLOPs per token, as a multiple of 2 x the dense multiply-adds
PASSES = {"training": 2.0, "generation": 1.0, "forward": 1.0}


def shapes(cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of every dense matrix a token meets, one entry per matrix."""
    d, hd = (
        cfg["hidden_size"],
        cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
    )
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    i = cfg["intermediate_size"]
    layer = [(d, q), (d, kv), (d, kv), (q, d), (d, i), (d, i), (i, d)]  # attention, gate/up/down
    return layer * cfg["num_hidden_layers"] + [(d, cfg["vocab_size"])]


def gemm_rate(mats: list[tuple[int, int]], rows: int, repeats: int = 15) -> float:
    """GFLOP/s of ``torch.matmul`` (fp32, this process's threads) over ``mats`` at ``rows``."""
    torch.manual_seed(0)
    xs = {k: torch.randn(rows, k) for k, _ in mats}
    ws = [torch.randn(k, n) for k, n in mats]
    flops = sum(2 * rows * k * n for k, n in mats)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        for (k, _), w in zip(mats, ws, strict=True):
            torch.matmul(xs[k], w)
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times[2:]) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a course run's executed/ folder")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not (args.run / "worklog").is_dir():
        sys.exit(f"{args.run} has no worklog/: give the executed/ folder of a course run.")
    torch.set_num_threads(1)
    cfg = json.loads((organism_dir() / "chat" / "config.json").read_text())
    mats = shapes(cfg)
    macs = sum(k * n for k, n in mats)
    big, small = gemm_rate(mats, 1024), gemm_rate(mats, 64)
    print(f"organism: {macs:,} dense multiply-adds per token ({2 * macs / 1e6:.2f} MFLOP forward)")
    print(
        f"fp32 GEMM, one thread: {big:.1f} GFLOP/s at 1,024 rows, {small:.1f} at 64 rows; "
        f"floor rate {big * args.cores:.1f} GFLOP/s on {args.cores} cores"
    )
    toks = worklog.tokens(worklog.read(args.run / "worklog"))
    print(
        "\n| notebook | training tokens | generation tokens | forward tokens | GFLOP | floor s "
        "| wall s | wall / floor |\n|---|---|---|---|---|---|---|---|"
    )
    total = {"gflop": 0.0, "floor": 0.0, "wall": 0.0}
    for nb in sorted(args.run.glob("[0-9][0-9]_*.ipynb")):
        n = nb.name[:2]
        t = toks.loc[n] if n in toks.index else None
        gflop = sum(2 * macs * PASSES[k] * (t[k] if t is not None else 0) for k in PASSES) / 1e9
        floor = gflop / (big * args.cores)
        wall = notebook_times(nb)["wall_s"]
        total["gflop"] += gflop
        total["floor"] += floor
        total["wall"] += wall
        cells = [f"{int(t[k]) if t is not None else 0:,}" for k in PASSES]
        ratio = f"{wall / floor:.0f}" if floor else "–"
        print(
            f"| {n} | "
            + " | ".join(cells)
            + f" | {gflop:.0f} | {floor:.1f} | {wall:.1f} | {ratio} |"
        )
    print(
        f"| **total** | | | | {total['gflop']:.0f} | {total['floor']:.1f} | {total['wall']:.1f} "
        f"| {total['wall'] / total['floor']:.0f} |"
    )


if __name__ == "__main__":
    main()
