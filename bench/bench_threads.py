"""The thread cliff, before and after the course's thread policy, side by side in one run.

    .venv/bin/python bench/bench_threads.py [--steps 10] [--repeats 3]

Workload: two independent LoRA fine-tunes of the organism (notebook 01's ``harmful10``, seeds 0
and 1, the cpu profile's batch of 16, ``--steps`` steps each), as notebook 01 trains 18 of them.

- ``before``: torch's default threads (2 here) in one process, the fine-tunes one after the
  other: what notebooks 01 and 03 did before the policy;
- ``after``: one torch thread per process, the two fine-tunes side by side
  (:func:`safealign_lib.pool.map_jobs`, the kernel and one spawned worker; the worker is started
  before the clock, as a notebook starts it once for all its jobs).

Loads: ``idle``, and ``busy`` (a busy loop in another process for the whole measurement: a
learner's laptop with a browser or a build running). Every (load, policy, repeat) runs in a
fresh process; the policies alternate within each load. Reports seconds per step (wall of both
fine-tunes / (2 x steps)) as medians over the repeats, and the ratio before / after.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = f"{ROOT}:{ROOT / 'bench'}"  # the workers import the job from bench/thread_jobs.py
BUSY = "import time\nend = time.time() + 4 * 3600\nwhile time.time() < end:\n    pass\n"
CHILD = """
import json, sys, time
import torch
from safealign_lib import pool
from thread_jobs import finetune_job
policy, steps = sys.argv[1], int(sys.argv[2])
jobs = [(0, steps), (1, steps)]
if policy == "after":
    pool.one_thread()
    pool.map_jobs(finetune_job, [(0, 1), (1, 1)], workers=2)  # start the worker, warm both
    t0 = time.perf_counter()
    pool.map_jobs(finetune_job, jobs, workers=2)
else:
    finetune_job(0, 1)  # warm up, as above
    t0 = time.perf_counter()
    for job in jobs:
        finetune_job(*job)
print(json.dumps({"threads": torch.get_num_threads(), "wall_s": time.perf_counter() - t0}))
"""


def measure(policy: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, policy, str(steps)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": PYTHONPATH},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", nargs="*", default=["idle", "busy"], choices=["idle", "busy"])
    args = ap.parse_args()
    table = {}
    for load in args.loads:
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load == "busy" else None
        try:
            runs: dict[str, list[float]] = {"before": [], "after": []}
            for r in range(args.repeats):
                for policy in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    m = measure(policy, args.steps)
                    runs[policy].append(m["wall_s"] / (2 * args.steps))
                    print(
                        f"{load} {policy} ({m['threads']} thread(s) in the caller): "
                        f"{runs[policy][-1]:.3f} s/step",
                        flush=True,
                    )
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        table[load] = {p: statistics.median(v) for p, v in runs.items()} | {"runs": runs}
    print(
        "\n| load | before: 2 threads, one after the other (s/step) | after: 1 thread x 2 "
        "processes (s/step) | before / after |\n|---|---|---|---|"
    )
    for load, t in table.items():
        print(
            f"| {load} | {t['before']:.3f} | {t['after']:.3f} | {t['before'] / t['after']:.1f}x |"
        )


if __name__ == "__main__":
    main()
