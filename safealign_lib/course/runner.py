"""Execute the course notebooks with papermill and summarise their metrics.

Used by ``make course`` (all notebooks, default profile) and by the notebook tests (smoke
profile). Notebooks run with cwd = ``notebooks/``, kernel ``python3`` and a timeout per cell.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from safealign_lib.config import REPO_ROOT, build_dir
from safealign_lib.course.contract import HEADLINES, REQUIRED
from safealign_lib.course.metrics_io import check_output_path, load

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


@dataclass
class RunRecord:
    number: str
    path: Path
    wall_s: float


def list_notebooks(numbers: Sequence[str] | None = None) -> list[Path]:
    """The course notebooks (``NN_name.ipynb``), optionally only the given numbers."""
    nbs = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if numbers:
        bad = [n for n in numbers if not str(n).strip().isdigit()]
        if bad:
            have = ", ".join(p.name[:2] for p in nbs)
            raise ValueError(
                f"Notebook numbers must be digits such as 00 or 3, got {bad}; the "
                f"course has {have}."
            )
        wanted = {f"{int(n):02d}" for n in numbers}
        nbs = [p for p in nbs if p.name[:2] in wanted]
        missing = wanted - {p.name[:2] for p in nbs}
        if missing:
            raise FileNotFoundError(f"No notebook numbered {sorted(missing)} in {NOTEBOOK_DIR}.")
    return nbs


def _failing_cell(nb_path: Path) -> str:
    try:
        nb = json.loads(nb_path.read_text())
    except (OSError, json.JSONDecodeError):
        return "unknown cell"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                src = "".join(cell.get("source", "")).strip().splitlines()
                first = src[0][:60] if src else "empty"
                return f"cell {i} ({first}): {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


def _kernel_config(config_class: type) -> object:
    """Kernel settings: local IPC sockets on POSIX, so the kernel neither opens TCP ports nor
    warns about unencrypted TCP after every notebook (Windows has no IPC transport)."""
    cfg = config_class()
    if os.name == "posix":
        cfg.KernelManager.transport = "ipc"
    return cfg


def run_notebook(path: Path, parameters: dict, out_dir: Path, timeout_s: int = 1200) -> RunRecord:
    """Execute one notebook into ``out_dir`` (papermill); raise :class:`NotebookFailed` on error."""
    import papermill as pm
    from traitlets.config import Config

    check_output_path(out_dir, "output folder for executed notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            config=_kernel_config(Config),
            cwd=str(path.parent),
            execution_timeout=timeout_s,
            progress_bar=False,
            log_output=False,
        )
    except Exception as err:  # papermill raises its own error types; report the cell either way
        raise NotebookFailed(
            f"{path.name} failed at {_failing_cell(out)} (executed copy: {out})"
        ) from err
    return RunRecord(path.name[:2], out, time.perf_counter() - t0)


def run_course(
    profile: str = "cpu",
    numbers: Sequence[str] | None = None,
    out_dir: Path | None = None,
    metrics_file: Path | None = None,
    timeout_s: int = 1200,
    extra: dict | None = None,
) -> list[RunRecord]:
    """Run the notebooks in order with ``profile``; metrics go to ``metrics_file``."""
    out_dir = out_dir or build_dir() / "executed"
    params = {"profile": profile, **(extra or {})}
    if metrics_file is not None:
        params["metrics_file"] = str(Path(metrics_file).resolve())
    records = []
    for nb in list_notebooks(numbers):
        print(f"running {nb.name} (profile {profile}) ...", flush=True)
        records.append(run_notebook(nb, params, out_dir, timeout_s))
        print(f"  done in {records[-1].wall_s:.1f} s", flush=True)
    return records


def summary_table(records: Sequence[RunRecord], metrics_file: Path | None = None) -> str:
    """A plain-text table: notebook, wall time, headline metrics."""
    m = load(metrics_file)
    lines = [f"{'notebook':<34} {'wall s':>7}  headline metrics", "-" * 100]
    for r in records:
        vals = m.get(r.number, {})
        head = ", ".join(f"{k}={vals[k]:.3g}" for k in HEADLINES.get(r.number, ()) if k in vals)
        missing = [k for k in REQUIRED.get(r.number, ()) if k not in vals]
        if missing:
            head += f"  [missing: {', '.join(missing)}]"
        lines.append(f"{r.path.name:<34} {r.wall_s:>7.1f}  {head}")
    lines.append(f"{'total':<34} {sum(r.wall_s for r in records):>7.1f}")
    return "\n".join(lines)
