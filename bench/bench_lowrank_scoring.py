"""Benchmark: scoring every LoRA module of a 7B-shaped adapter, low-rank vs the released dense way.

Setup: 32 blocks x (q_proj, v_proj), d = 4096, LoRA r = 8, alpha = 16, random weights. The base
and chat checkpoints (only the q/v tensors, float32 like the course organism, or float16 like the
Llama-2 release with ``--file-dtype float16``; 4 shards each with a
``model.safetensors.index.json``; chat = base + dense random V) and a peft adapter folder are
written to a temp dir (8 GB at full size in float32).

- low-rank path (the library): ``load_lora_factors`` -> ``compute_projections`` (streams one
  tensor at a time, C B = V (V^T B) / ||V||_F, rows split over ``--threads`` workers) ->
  ``safelora_scores`` + ``splora_scores`` (cosine, norms, distance, E-DIEM from r x r Grams),
  all modules, every repeat.
- dense path (the released algorithm): per module, V = chat - base, C = V V^T / ||V||_F
  (d x d), X = (C B) A and Y = B A (dense d x d), cosine and distance of the flattened
  matrices. It reads the same files the same way. Being slow, it runs on the first
  ``--dense-modules`` modules only; its per-module time is extrapolated to all modules.

Each path runs in its own subprocess, so its peak RSS (VmHWM) is its own; the two run
alternately for ``--rounds`` rounds, so that a drift of the machine's speed hits both. Reported:
median time per module and for all modules, the speed ratio (median of the rounds' ratios, and
each round's), peak RSS of each path (and of a process that only imports the libraries), and
the largest disagreement of the scores.

    .venv/bin/python bench/bench_lowrank_scoring.py            # full (~3 min, 8 GB in a temp dir)
    .venv/bin/python bench/bench_lowrank_scoring.py --quick    # d = 1024, 4 blocks (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULES = ("q_proj", "v_proj")


def _names(blocks: int) -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}.weight" for i in range(blocks) for m in MODULES]


def _fmt_s(seconds: float) -> str:
    return (
        f"{seconds * 1e3:.1f} ms"
        if seconds < 1
        else f"{seconds:.2f} s"
        if seconds < 100
        else f"{seconds:.0f} s"
    )


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM). ru_maxrss would inherit the parent's
    peak through fork + exec on Linux, so it is read only where /proc is missing."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_fixture(root: Path, blocks: int, d: int, r: int, seed: int, dtype: str) -> None:
    """base/ and chat/ checkpoints (shards + index) and a peft adapter folder."""
    import torch
    from safetensors.torch import save_file

    from safealign_lib.adapters.lora_io import write_adapter

    gen = torch.Generator().manual_seed(seed)
    names = _names(blocks)
    per_shard = max(2, len(names) // 4)
    for model in ("base", "chat"):
        (root / model).mkdir(parents=True)
    index: dict[str, str] = {}
    shards = [names[i : i + per_shard] for i in range(0, len(names), per_shard)]
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        base, chat = {}, {}
        for n in shard:
            w = torch.randn(d, d, generator=gen) * 0.02
            base[n] = w.to(getattr(torch, dtype))
            chat[n] = (w + torch.randn(d, d, generator=gen) * 1e-3).to(
                getattr(torch, dtype)
            )  # dense V
            index[n] = fname
        save_file(base, str(root / "base" / fname))
        save_file(chat, str(root / "chat" / fname))
        del base, chat
    for model in ("base", "chat"):
        (root / model / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": index})
        )
    state = {}
    for n in names:
        mod = "base_model.model." + n.removesuffix(".weight")
        state[f"{mod}.lora_A.weight"] = torch.randn(r, d, generator=gen) * 0.01
        state[f"{mod}.lora_B.weight"] = torch.randn(d, r, generator=gen) * 0.01
    write_adapter(
        root / "adapter",
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(MODULES)},
        state,
    )


def worker_lowrank(root: Path, repeats: int) -> dict:
    from safealign_lib.adapters.lora_io import load_lora_factors
    from safealign_lib.methods.safelora import compute_projections
    from safealign_lib.methods.splora import splora_scores

    rss_import = _peak_rss_mb()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        factors = load_lora_factors(root / "adapter")
        proj = compute_projections(factors, root / "base", root / "chat")
        df = splora_scores(proj)  # Safe LoRA's cosine table + SPLoRA's E-DIEM
        times.append(time.perf_counter() - t0)
    return {
        "seconds": times,
        "n_modules": len(df),
        "rss_after_import_mb": rss_import,
        "peak_rss_mb": _peak_rss_mb(),
        "cosine": df["cosine"].tolist(),
        "distance": df["distance"].tolist(),
    }


def worker_dense(root: Path, repeats: int, n_modules: int, referee: bool) -> dict:
    import torch

    from safealign_lib.adapters.lora_io import load_lora_factors
    from safealign_lib.adapters.weights import SafetensorsWeights

    rss_import = _peak_rss_mb()
    factors = load_lora_factors(root / "adapter")
    names = list(factors)[:n_modules]
    base, chat = SafetensorsWeights(root / "base"), SafetensorsWeights(root / "chat")
    times, cos, dist = [], [], []
    for rep in range(repeats):
        t0 = time.perf_counter()
        for n in names:
            f = factors[n]
            v = chat.get(n) - base.get(n)
            c = v @ v.T / torch.linalg.matrix_norm(v)  # d x d, O(d^3)
            x = (c @ f.B) @ f.A * f.scale  # dense s C B A
            y = f.B @ f.A * f.scale  # dense s B A
            if rep == 0:
                cos.append(
                    float(torch.nn.functional.cosine_similarity(x.reshape(1, -1), y.reshape(1, -1)))
                )
                dist.append(float(torch.linalg.vector_norm(x - y)))
            del v, c, x, y
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_mb()
    # untimed referee: the same dense algorithm in float64
    ref_cos, ref_dist = [], []
    for n in names if referee else []:
        f = factors[n]
        v = chat.get(n, torch.float64) - base.get(n, torch.float64)
        c = v @ v.T / torch.linalg.matrix_norm(v)
        b, a = f.B.double(), f.A.double()
        x, y = (c @ b) @ a * f.scale, b @ a * f.scale
        ref_cos.append(float((x * y).sum() / (x.norm() * y.norm())))
        ref_dist.append(float((x - y).norm()))
        del v, c, x, y
    return {
        "seconds": times,
        "n_modules": len(names),
        "rss_after_import_mb": rss_import,
        "peak_rss_mb": peak,
        "cosine": cos,
        "distance": dist,
        "ref_cosine": ref_cos,
        "ref_distance": ref_dist,
    }


def baseline_rss() -> dict:
    import torch  # noqa: F401

    import safealign_lib.methods.safelora  # noqa: F401
    import safealign_lib.methods.splora  # noqa: F401

    return {"peak_rss_mb": _peak_rss_mb()}


def _run_worker(args: list[str], threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, __file__, *args, "--threads", str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="d = 1024, 4 blocks, fewer repeats")
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="low-rank repeats (all modules each)")
    p.add_argument("--dense-modules", type=int, default=4, help="modules scored by the dense path")
    p.add_argument("--dense-repeats", type=int, default=2)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="low-rank and dense workers run alternately this many times; the ratio "
        "reported is the median of the rounds' ratios",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads of both paths (torch's, and the library's row workers); each path runs "
        "alone, so both get the same cores (default 2, the target's 2-core laptop)",
    )
    p.add_argument(
        "--file-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="dtype of the checkpoint files (both paths compute in float32)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the figures as markdown here")
    p.add_argument("--worker", choices=["lowrank", "dense", "baseline"], help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--referee", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    if a.worker:
        res = {
            "lowrank": lambda: worker_lowrank(a.root, a.repeats),
            "dense": lambda: worker_dense(a.root, a.dense_repeats, a.dense_modules, a.referee),
            "baseline": baseline_rss,
        }[a.worker]()
        print(json.dumps(res))
        return
    if a.quick:
        a.blocks, a.d, a.repeats, a.dense_modules, a.dense_repeats = 4, 1024, 2, 2, 2

    n_modules = a.blocks * len(MODULES)
    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_fixture(root, a.blocks, a.d, a.r, seed=0, dtype=a.file_dtype)
        t_write = time.perf_counter() - t0
        # let the kernel finish writing the fixture back to disk first, so that neither path is
        # timed while 8 GB of dirty pages are being flushed (the first worker would pay for it)
        t0 = time.perf_counter()
        if hasattr(os, "sync"):
            os.sync()
        t_sync = time.perf_counter() - t0
        common = ["--root", str(root)]
        base = _run_worker(["--worker", "baseline", *common], a.threads)
        lows, denses = [], []
        for rnd in range(a.rounds):  # alternate, so that a drift of the machine hits both paths
            lows.append(
                _run_worker(
                    ["--worker", "lowrank", *common, "--repeats", str(a.repeats)], a.threads
                )
            )
            denses.append(
                _run_worker(
                    [
                        "--worker",
                        "dense",
                        *common,
                        "--dense-repeats",
                        str(a.dense_repeats),
                        "--dense-modules",
                        str(a.dense_modules),
                        *(["--referee"] if rnd == 0 else []),
                    ],
                    a.threads,
                )
            )

    low_pers = [statistics.median(lo["seconds"]) / lo["n_modules"] for lo in lows]
    dense_pers = [statistics.median(de["seconds"]) / de["n_modules"] for de in denses]
    ratios = [de / lo for de, lo in zip(dense_pers, low_pers, strict=True)]
    low_per, dense_per = statistics.median(low_pers), statistics.median(dense_pers)
    low, dense = lows[0], denses[0]
    low_rss = max(lo["peak_rss_mb"] for lo in lows)
    dense_rss = max(de["peak_rss_mb"] for de in denses)
    k = dense["n_modules"]

    def max_err(values: list[float], ref: list[float], relative: bool = False) -> str:
        err = max(
            abs(v - r) / (abs(r) if relative else 1.0) for v, r in zip(values, ref, strict=False)
        )
        return f"{err:.1e}"

    ref_c, ref_d = dense["ref_cosine"], dense["ref_distance"]
    rows = [
        (
            "modules scored",
            f"{low['n_modules']} (low-rank, x{a.repeats} repeats)",
            f"{k} (dense, x{a.dense_repeats} repeats)",
        ),
        (
            "median time per module (per round)",
            f"{_fmt_s(low_per)} ({', '.join(_fmt_s(t) for t in low_pers)})",
            f"{_fmt_s(dense_per)} ({', '.join(_fmt_s(t) for t in dense_pers)})",
        ),
        (
            f"time for all {n_modules} modules",
            f"{_fmt_s(low_per * n_modules)} (measured)",
            f"{_fmt_s(dense_per * n_modules)} (extrapolated from {k})",
        ),
        (
            f"speed ratio (dense / low-rank), median of {a.rounds} rounds",
            f"{statistics.median(ratios):.0f}x (rounds: {', '.join(f'{x:.0f}x' for x in ratios)})",
            "",
        ),
        ("peak RSS of the process", f"{low_rss:.0f} MB", f"{dense_rss:.0f} MB"),
        (
            "  of which imports only",
            f"{base['peak_rss_mb']:.0f} MB",
            f"{base['peak_rss_mb']:.0f} MB",
        ),
        (
            "max abs cosine error vs float64 dense",
            max_err(low["cosine"][:k], ref_c),
            max_err(dense["cosine"], ref_c),
        ),
        (
            "max relative distance error vs float64 dense",
            max_err(low["distance"][:k], ref_d, True),
            max_err(dense["distance"], ref_d, True),
        ),
        (
            "max abs cosine difference low-rank vs dense",
            max_err(low["cosine"][:k], dense["cosine"]),
            "",
        ),
    ]
    cmd = ".venv/bin/python bench/bench_lowrank_scoring.py" + (
        " " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""
    )
    md = [
        f"Command: `{cmd}`",
        "",
        f"Setup: {a.blocks} blocks x (q_proj, v_proj), d = {a.d}, r = {a.r}, alpha = {2 * a.r}; "
        f"{a.file_dtype} checkpoints in shards; torch {torch.__version__}, {a.threads} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible. "
        f"Writing the fixture took {t_write:.0f} s and flushing it to disk {t_sync:.0f} s "
        "(neither timed below).",
        "",
        "| | low-rank (library) | dense (released algorithm) |",
        "|---|---|---|",
    ]
    md += [f"| {r0} | {r1} | {r2} |" for r0, r1, r2 in rows]
    text = "\n".join(md)
    print(text)
    if a.out:
        a.out.write_text(
            "# Low-rank Safe LoRA / SPLoRA scoring vs the released dense algorithm\n\n"
            + text
            + "\n"
        )


if __name__ == "__main__":
    main()
