"""One call that sets up a course notebook: :func:`notebook_setup`.

Every notebook's derived-configuration cell (the one after its parameters) is
``P, timer = notebook_setup(profile, ...)`` with the values of its ``parameters`` cell. It
checks the parameters papermill injected (an unknown name or an
empty list is an error, not a silent fallback), quiets the progress bars (the package itself
filters the known harmless warnings), resolves and validates the profile (with the notebook's
overrides), allows hub
downloads only for a profile that names hub models, applies the notebook's thread policy, seeds
the global random generators when asked, prints a one-line summary and starts the timer whose
reading becomes the notebook's ``wall_s``.

The signature is fixed: later work only adds keyword arguments.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from safealign_lib.config import ANSWER_CACHE_ENV, build_dir
from safealign_lib.course.profiles import Profile, get_profile, validate


@dataclass
class Timer:
    """Wall-clock time since the notebook's set-up."""

    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.start


def _assigned(source: str) -> dict[str, object]:
    """{name: literal value} of the top-level literal assignments in a cell's source."""
    out: dict[str, object] = {}
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return out
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        out[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[target.id] = None
    return out


def check_injected_parameters(history: Sequence[str]) -> None:
    """Check the parameters papermill injected against the notebook's ``parameters`` cell.

    ``history`` is the kernel's list of executed cell sources (IPython's ``In``). Papermill
    runs the notebook's parameters cell, then a cell that starts with ``# Parameters`` holding
    the injected values. An injected name the notebook does not declare, or an empty list or
    tuple, raises ``ValueError`` naming it (papermill itself only warns, and an empty list
    would silently fall back to the profile's values). Outside papermill this does nothing.
    """
    for i, src in enumerate(history):
        lines = src.strip().splitlines()
        # papermill's cell: first line exactly "# Parameters", right after the declared cell
        if i < 2 or not lines or lines[0].strip() != "# Parameters":
            continue
        declared, injected = _assigned(history[i - 1]), _assigned(src)
        if not declared:
            continue
        unknown = sorted(set(injected) - set(declared))
        if unknown:
            raise ValueError(
                f"Unknown notebook parameter(s) {unknown}; this notebook's parameters are "
                f"{sorted(declared)}. Check the spelling of -p NAME VALUE."
            )
        empty = sorted(k for k, v in injected.items() if isinstance(v, list | tuple) and not v)
        if empty:
            raise ValueError(
                f"Notebook parameter(s) {empty} are empty lists; give at least one value, or "
                "None for the profile's default."
            )
        return


def _kernel_history() -> list[str]:
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    return list(shell.user_ns.get("In", [])) if shell is not None else []


def notebook_setup(
    profile: str = "cpu",
    *,
    seeds: Sequence[int] | None = None,
    device: str | None = None,
    threads: int | None = None,
    seed: int | None = None,
    quiet: bool = False,
    **overrides: object,
) -> tuple[Profile, Timer]:
    """Set up a notebook: returns ``(profile, timer)``.

    ``profile`` names a run profile (``cpu``, ``smoke``, ``gpu``). ``seeds`` and ``device``
    override the profile's when given (``None`` keeps them); other keyword arguments override
    profile fields by name (``chat_model=...``); a value of ``None`` keeps the profile's.
    On the CPU, torch runs one thread (the course's thread policy, see
    :mod:`safealign_lib.pool`); ``threads`` sets another count. ``seed`` seeds Python,
    NumPy and torch. Raises ``ValueError`` naming every problem when the profile cannot run here.
    """
    timer = Timer()
    check_injected_parameters(_kernel_history())
    for name, value in (("seeds", seeds),):
        if value is not None and (isinstance(value, str | bytes) or not hasattr(value, "__len__")):
            raise TypeError(
                f"{name} must be a list of integers such as [0, 1, 2], got {value!r} "
                f"(papermill: -y '{name}: [0, 1, 2]' or -p {name} '[0, 1, 2]' with YAML)."
            )
        if value is not None and len(value) == 0:
            raise ValueError(
                f"{name} is empty; give at least one value, or None for the profile's."
            )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    given = {"seeds": seeds, "device": device, **overrides}
    P = get_profile(profile, **{k: v for k, v in given.items() if v is not None})
    problems = validate(P)
    if problems:
        raise ValueError(f"Profile {P.name!r} cannot run here: " + "; ".join(problems))
    if not P.network:
        # the organism's answers, first-token probabilities and fine-tunes are computed once
        # per build folder (safealign_lib.models.memo, keyed by the model's state, the inputs,
        # the settings and the code). Hub profiles leave it off unless the variable is set:
        # the key hashes every weight on each call, unmeasured for billions of weights.
        os.environ.setdefault(ANSWER_CACHE_ENV, str(build_dir() / "answers"))
    if P.network:  # a profile that names hub models is the user's opt-in to downloads
        from safealign_lib.models.loading import allow_hub

        allow_hub(True)
    if P.device == "cpu":
        from safealign_lib import pool

        # the course's thread policy (see safealign_lib.pool): one torch thread per
        # process, the cores used by running independent jobs side by side
        pool.one_thread()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
    if seed is not None:
        from safealign_lib.adapters.finetune import seed_everything

        seed_everything(seed)
    if not quiet:
        print(
            f"profile={P.name}  seeds={list(P.seeds)}  device={P.device}  "
            f"chat={P.chat_model}  base={P.base_model}  n_eval={P.n_eval}"
        )
    return P, timer
