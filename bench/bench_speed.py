"""The course's speed, side by side: this tree against a reference commit, idle and with one
core kept busy by another process, in one run (issue 14).

    .venv/bin/python bench/bench_speed.py --ref 6df03c2 --profile cpu
    .venv/bin/python bench/bench_speed.py --profile smoke --only 01 --loads idle busy

Each (load, variant) runs ``safealign course run`` from a cold adapter cache (an empty build
folder of its own) in a fresh process, with the variant's source first on ``PYTHONPATH``: the
reference commit is exported with ``git archive`` (organism included) into a temporary folder,
so nothing in this checkout changes. Loads: ``idle`` (nothing else of ours running) and
``busy`` (a bounded busy loop in another process for the whole run, the state of a learner's
laptop with a browser or a build running). The variants alternate within each load, so a drift
of the machine's speed falls on both. Per notebook it reports papermill's wall time, and for the
run the peak memory of the whole process tree (kernel and pool workers summed, sampled every
0.2 s: what Binder's 2 GB limit applies to). Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safealign_lib.course.breakdown import notebook_times  # noqa: E402

BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def export(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` (this repository) in ``dest``, via ``git archive``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_course(src: Path, profile: str, only: list[str] | None, work: Path) -> dict:
    """One cold-cache course run of the source tree ``src``: walls per notebook, peak memory."""
    out = work / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "SAFEALIGN_BUILD": str(work / "build"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("OMP_NUM_THREADS", None)  # each variant applies its own thread policy
    cmd = [
        sys.executable,
        "-c",
        "import sys; from safealign_lib.course.cli import main; sys.exit(main())",
        "course",
        "run",
        "--profile",
        profile,
        "--output",
        str(out),
    ]
    if only:
        cmd += ["--only", *only]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ps, peak, done = psutil.Process(proc.pid), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = proc.communicate()[0].decode()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"course run of {src} failed:\n{log[-3000:]}")
    walls = {
        p.name[:2]: notebook_times(p)["wall_s"] for p in sorted(out.glob("[0-9][0-9]_*.ipynb"))
    }
    return {
        "walls": walls,
        "notebooks_s": sum(walls.values()),
        "command_s": time.perf_counter() - t0,
        "peak_tree_mb": peak[0] / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default="6df03c2", help="the reference commit (main before issue 14)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="notebook numbers (default: all)")
    ap.add_argument("--loads", nargs="*", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    ap.add_argument("--no-ref", action="store_true", help="run this tree only")
    args = ap.parse_args()
    ref = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    here = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        variants = {} if args.no_ref else {f"ref {ref}": export(ref, Path(tmp) / "ref")}
        variants[f"this tree {here}"] = ROOT
        for load in args.loads:
            for name, src in variants.items():
                busy = None
                if load == "busy":
                    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=4 * 3600)])
                try:
                    work = Path(tmp) / f"{load}_{len(results)}"
                    print(f"{load}: {name} ...", flush=True)
                    r = run_course(src, args.profile, args.only, work)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                results.append({"load": load, "variant": name, **r})
                print(
                    f"  {r['notebooks_s']:.1f} s of notebooks, peak {r['peak_tree_mb']:.0f} MB",
                    flush=True,
                )
    if args.out:
        args.out.write_text(json.dumps({"profile": args.profile, "runs": results}, indent=1))
    numbers = sorted({n for r in results for n in r["walls"]})
    head = ["notebook", *[f"{r['variant']}, {r['load']}" for r in results]]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for n in numbers:
        print(
            f"| {n} | "
            + " | ".join(f"{r['walls'].get(n, float('nan')):.1f}" for r in results)
            + " |"
        )
    print("| **total** | " + " | ".join(f"**{r['notebooks_s']:.1f}**" for r in results) + " |")
    print(
        "| peak memory, process tree (MB) | "
        + " | ".join(f"{r['peak_tree_mb']:.0f}" for r in results)
        + " |"
    )


if __name__ == "__main__":
    main()
