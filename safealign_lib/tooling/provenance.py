"""Provenance of a course run: what a regression runner needs to tell *why* a metric moved.

:func:`collect` gathers the commit, the versions of the libraries that shape the numbers, a
hash of the model weights (the organism's safetensors files; the hub ids for hub profiles), the
profile and the notebook's parameters. The runner stores it per notebook under the reserved
``_provenance`` key of the metrics file (:func:`safealign_lib.course.metrics_io.
record_provenance`); :func:`differences` lists what changed between two such records.

Importing this module imports neither torch nor peft (versions come from package metadata).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from safealign_lib.config import REPO_ROOT

PACKAGES = ("safealign_lib", "torch", "transformers", "peft")
# fields that differ on every run by design: shown by nobody, compared by nobody
VOLATILE = ("recorded_at",)


def commit() -> str:
    """The checkout's commit (``git rev-parse HEAD``), or ``"unknown"`` outside a checkout."""
    if REPO_ROOT is None or not (REPO_ROOT / ".git").exists():
        return "unknown"
    try:
        # rev-parse only reads: it never touches the index (unlike `git status`)
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers (``"absent"`` if missing)."""
    out = {}
    for name in PACKAGES:
        try:  # metadata normalises the name: safealign_lib finds safealign-lib
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def weights_hash(model: str | Path) -> str:
    """A short sha256 of a model folder's ``*.safetensors`` files (names and bytes), or
    ``"hub:<id>"`` for a hub id, or ``"missing"`` for a folder without weights."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"hub:{model}"
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return "missing"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def collect(profile: str, parameters: Mapping[str, object]) -> dict[str, object]:
    """The provenance of one notebook run with ``profile`` and papermill ``parameters``."""
    from safealign_lib.course.profiles import get_profile

    p = get_profile(profile)
    return {
        "commit": commit(),
        "versions": versions(),
        "models": {"chat": weights_hash(p.chat_model), "base": weights_hash(p.base_model)},
        "profile": profile,
        # the metrics file's own path is where the record lives, not a setting of the run
        "parameters": {k: v for k, v in parameters.items() if k != "metrics_file"},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _flat(record: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in record.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif k not in VOLATILE:
            out[f"{prefix}{k}"] = v
    return out


def differences(old: Mapping[str, object], new: Mapping[str, object]) -> list[str]:
    """``"field: old -> new"`` for each provenance field that differs (nested fields dotted)."""
    a, b = _flat(old), _flat(new)
    return [
        f"{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
