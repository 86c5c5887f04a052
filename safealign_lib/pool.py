"""Independent jobs (trainings, evaluations) run side by side, one torch thread per process.

The course's thread policy: the organism's matrices are 128 wide, so a second torch thread in
one process buys little on an idle machine and, on a busy one, spin-waits for a core that
another program holds (a LoRA step 2.4-15x slower, bench/RESULTS.md). Every process therefore
runs one thread, and the cores are used by running independent jobs at once:

    results = pool.map_jobs(train_and_evaluate, [(c, s) for c in conds for s in seeds])

The calling process works too (it takes jobs from the end of the list while ``workers - 1``
spawned processes take them from the front), so two workers cost one extra process. Worker
processes are started with ``spawn`` (safe on macOS and Windows, and from a Jupyter kernel),
once per kernel, and reused. A job must be a module-level function with picklable arguments
(they travel by value, as bytes; a job that cannot travel runs here, with a warning); it runs
the same arithmetic wherever it runs (one thread everywhere), and the caller's random
state is restored around every job it runs itself, so results never depend on which process
ran what.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import multiprocessing
import os
import pickle
import random
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from safealign_lib import worklog

T = TypeVar("T")
WORKERS_ENV = "SAFEALIGN_WORKERS"
_executor: tuple[int, ProcessPoolExecutor] | None = None


def one_thread() -> None:
    """The course's thread policy for this process: one torch thread (intra- and inter-op)."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: keep what there is
        pass


# Memory one course process may reach (bench/RESULTS.md: the kernel and one worker of notebook
# 03 peaked at 2.16 GB together, cpu profile): a second process only where it fits.
PROCESS_PEAK_BYTES = 1.1 * 2**30


def memory_limit() -> int | None:
    """The memory this process may use: the cgroup's limit (containers, Binder) or the
    machine's physical memory; None when neither can be read."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform (Windows)
        return None


def default_workers(device: str = "cpu") -> int:
    """How many jobs run at once: ``$SAFEALIGN_WORKERS`` if set, else 1 on an accelerator (one
    device) and on the CPU min(2, CPU cores, what memory holds at :data:`PROCESS_PEAK_BYTES`
    a process): 1 in Binder's 2 GB, 2 on a laptop (more cores give more only to a bigger
    model)."""
    env = os.environ.get(WORKERS_ENV)
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"${WORKERS_ENV} must be a whole number >= 1, got {env!r}.")
        return n
    if device != "cpu":
        return 1
    limit = memory_limit()
    fits = int(limit // PROCESS_PEAK_BYTES) if limit is not None else 2
    return max(1, min(2, os.cpu_count() or 1, fits))


def _worker_init() -> None:
    # an interrupt (Jupyter's stop button, papermill's kernel shutdown) is the caller's to
    # handle: it stops the workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ[worklog.ROLE_ENV] = "worker"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    one_thread()


def executor(n_processes: int) -> ProcessPoolExecutor:
    """The kernel's pool of ``n_processes`` spawned workers (started on first use, kept)."""
    global _executor
    if _executor is not None and _executor[0] == n_processes:
        return _executor[1]
    shutdown()
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(n_processes, mp_context=ctx, initializer=_worker_init)
    _executor = (n_processes, pool)
    return pool


def shutdown(kill: bool = False) -> None:
    """Stop the worker processes (they start again on the next :func:`map_jobs`); ``kill``
    ends them at once instead of after their current job."""
    global _executor
    if _executor is not None:
        pool, _executor = _executor[1], None
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
        pool.shutdown(wait=not kill, cancel_futures=True)


atexit.register(shutdown)


def release_memory() -> None:
    """Hand the memory a finished job freed back to the system (glibc keeps it otherwise, and
    two processes each holding a training step's peak would not fit Binder's 2 GB)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def _run_here(fn: Callable[..., T], args: tuple) -> T:
    """``fn(*args)`` in this process, its random state left as it was."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())  # noqa: NPY002
    try:
        return fn(*args)
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])  # noqa: NPY002
        torch.set_rng_state(state[2])
        release_memory()


def _call(blob: bytes) -> bytes:
    """Run a pickled ``(fn, args)`` in a worker; the result goes back pickled.

    Jobs and results travel as plain bytes, by value: multiprocessing's own pickler would
    share tensors through ``/dev/shm``, which is 64 MB in many containers (Binder's included)
    and would hold every model a job returns."""
    fn, args = pickle.loads(blob)  # noqa: S301 - our own process's bytes, never a file
    out = pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL)
    release_memory()
    return out


def _pickled(fn: Callable, job: tuple) -> bytes | None:
    """``(fn, job)`` as the bytes a worker receives, or None when they cannot travel."""
    try:
        return pickle.dumps((fn, job), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        return None


def _what_cannot_travel(fn: Callable, job: tuple) -> str:
    """Which part of ``(fn, job)`` fails to pickle, in words."""
    if _pickled(fn, ()) is None:
        return "the function (a lambda or a local function?)"
    for i, arg in enumerate(job):
        if _pickled(len, (arg,)) is None:
            return f"argument {i} ({type(arg).__name__})"
    return "the job"


def map_jobs(
    fn: Callable[..., T],
    jobs: Sequence[tuple[Any, ...]],
    workers: int | None = None,
    device: str = "cpu",
) -> list[T]:
    """``[fn(*job) for job in jobs]``, up to ``workers`` at once (default:
    :func:`default_workers` for ``device``); results in the order of ``jobs``. The first job
    that raises stops the others from starting, and its exception is raised here."""
    workers = default_workers(device) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    jobs = [tuple(j) for j in jobs]
    if workers == 1 or len(jobs) < 2:
        return [_run_here(fn, job) for job in jobs]
    blobs = {0: _pickled(fn, jobs[0])}  # the check's bytes are job 0's message (workers take it)
    if blobs[0] is None:
        warnings.warn(
            f"{getattr(fn, '__name__', fn)}: {_what_cannot_travel(fn, jobs[0])} cannot be sent "
            "to another process; running the jobs one by one here. Use module-level functions "
            "and picklable arguments, or pass workers=1 to say so.",
            stacklevel=2,
        )
        return [_run_here(fn, job) for job in jobs]
    n_processes = min(workers, len(jobs)) - 1
    processes = executor(n_processes)
    results: dict[int, T] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    ends = [0, len(jobs) - 1]  # the next job from the front (workers) and from the back (here)

    def take(end: int) -> int | None:
        with lock:
            if errors or ends[0] > ends[1]:
                return None
            i = ends[end]
            ends[end] += 1 if end == 0 else -1
            return i

    def feed() -> None:  # one thread per worker process: one job in flight at a time
        while (i := take(0)) is not None:
            try:
                blob = blobs.pop(i, None) or _pickled(fn, jobs[i])
                if blob is None:
                    raise TypeError(f"job {i} cannot be sent to a worker; pass workers=1.")
                results[i] = pickle.loads(processes.submit(_call, blob).result())  # noqa: S301
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller below
                with lock:
                    errors.append(e)

    feeders = [threading.Thread(target=feed, daemon=True) for _ in range(n_processes)]
    for t in feeders:
        t.start()
    try:
        while (i := take(1)) is not None:
            results[i] = _run_here(fn, jobs[i])
    except BaseException as e:
        with lock:
            errors.append(e)
        if isinstance(e, KeyboardInterrupt):  # stop now, not after the workers' current jobs
            shutdown(kill=True)
    for t in feeders:
        t.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(jobs))]
