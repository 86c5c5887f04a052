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
of the machine's speed falls on both. Per notebook it reports papermill's wall time and the peak
memory of the notebook's processes (kernel and pool workers summed, as PSS and RSS, sampled
every 0.5 s: what Binder's 2 GB limit applies to). ``--build`` reuses a build folder instead of
a cold one (the cached-run times). Writes JSON and prints a Markdown table.
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

from safealign_lib.tooling.breakdown import notebook_times  # noqa: E402

BUSY = "import time\nend = time.time() + {s}\nwhile time.time() < end:\n    pass\n"


def export(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` (this repository) in ``dest``, via ``git archive``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def tree_memory(proc: psutil.Process) -> dict[int, tuple[int, int]]:
    """Per kernel (a child of the runner ``proc``, one per notebook): (RSS, PSS) bytes of it and
    its pool workers together. The runner itself is left out: in JupyterLab the kernel and its
    workers run under the server instead. PSS splits the pages that processes share (torch's
    libraries) among them, so its sum is what the processes hold together."""
    out = {}
    for kernel in proc.children():
        rss = pss = 0
        try:
            family = [kernel, *kernel.children(recursive=True)]
        except psutil.Error:
            continue
        for p in family:
            try:
                info = p.memory_full_info()
            except psutil.Error:
                continue
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
        out[kernel.pid] = (rss, pss)
    return out


def run_course(
    src: Path, profile: str, only: list[str] | None, work: Path, build: Path | None = None
) -> dict:
    """One course run of the source tree ``src`` (a cold adapter cache unless ``build`` names a
    build folder to reuse): walls and peak memory per notebook."""
    out = work / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "SAFEALIGN_BUILD": str(build or work / "build"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("OMP_NUM_THREADS", None)  # each variant applies its own thread policy
    cmd = [
        sys.executable,
        "-c",
        "import sys; from safealign_lib.tooling.cli import main; sys.exit(main())",
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
    # cwd = the variant's tree: ``python -c`` puts the working directory first on sys.path,
    # ahead of PYTHONPATH, so from this checkout the runner would import this tree's library
    # (and run this tree's notebooks) whatever the variant
    proc = subprocess.Popen(
        cmd, env=env, cwd=str(src), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    ps, done = psutil.Process(proc.pid), threading.Event()
    peaks: dict[int, list[int]] = {}  # kernel pid -> [RSS, PSS], in the notebooks' order

    def sample() -> None:
        while not done.is_set():
            for pid, (rss, pss) in tree_memory(ps).items():
                old = peaks.setdefault(pid, [0, 0])
                old[0], old[1] = max(old[0], rss), max(old[1], pss)
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = proc.communicate()[0].decode()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"course run of {src} failed:\n{log[-3000:]}")
    executed = sorted((out / "executed").glob("[0-9][0-9]_*.ipynb"))
    walls = {p.name[:2]: notebook_times(p)["wall_s"] for p in executed}
    return {
        "walls": walls,
        "notebooks_s": sum(walls.values()),
        "command_s": time.perf_counter() - t0,
        "peak_rss_mb": max((p[0] for p in peaks.values()), default=0) / 2**20,
        "peak_pss_mb": max((p[1] for p in peaks.values()), default=0) / 2**20,
        # kernels in the order they started: one per notebook run
        "peak_pss_mb_per_notebook": dict(
            zip(walls, [p[1] / 2**20 for p in peaks.values()], strict=False)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref", default="6df03c2", help="the reference commit (main before issue 14)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="notebook numbers (default: all)")
    ap.add_argument("--loads", nargs="*", default=["idle", "busy"], choices=["idle", "busy"])
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default: print only)")
    ap.add_argument("--no-ref", action="store_true", help="run this tree only")
    ap.add_argument(
        "--build", type=Path, default=None, help="reuse this build folder (a cached run)"
    )
    ap.add_argument(
        "--keep", type=Path, default=None, help="keep each run's output and build folders here"
    )
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
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp_dir:
        tmp = args.keep or Path(tmp_dir)
        variants = {} if args.no_ref else {f"ref {ref}": export(ref, Path(tmp) / "ref")}
        variants[f"this tree {here}"] = ROOT
        for load in args.loads:
            for name, src in variants.items():
                busy = None
                if load == "busy":
                    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(s=4 * 3600)])
                try:
                    work = Path(tmp) / f"{load}_{len(results)}"
                    if work.exists():
                        sys.exit(f"{work} exists: give --keep an empty or new folder.")
                    print(f"{load}: {name} ...", flush=True)
                    r = run_course(src, args.profile, args.only, work, args.build)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
                results.append({"load": load, "variant": name, "folder": str(work), **r})
                print(
                    f"  {r['notebooks_s']:.1f} s of notebooks ({r['walls']}), peak "
                    f"{r['peak_pss_mb']:.0f} MB PSS / {r['peak_rss_mb']:.0f} MB RSS",
                    flush=True,
                )
                if args.out:  # after every run: a long benchmark keeps what it measured
                    args.out.write_text(
                        json.dumps({"profile": args.profile, "runs": results}, indent=1)
                    )
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
        "| peak memory, kernel + workers, PSS (MB) | "
        + " | ".join(f"{r['peak_pss_mb']:.0f}" for r in results)
        + " |"
    )


if __name__ == "__main__":
    main()
