"""Execute the course notebooks with papermill and summarise their metrics.

Used by ``make course`` (all notebooks, default profile), ``safealign course run`` (a profile,
some notebooks, parameters, an output folder) and the notebook tests (smoke profile). Notebooks
run with cwd = ``notebooks/``, kernel ``python3`` and a timeout per cell. Parameters
(``-p seeds "[0, 1]"``, or a YAML file) go to the notebooks whose ``parameters`` cell declares
them; a name no selected notebook declares is an error. After each notebook the runner stores
the run's provenance beside its metrics (:mod:`safealign_lib.tooling.provenance`).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from safealign_lib import worklog
from safealign_lib.config import REPO_ROOT, build_dir
from safealign_lib.course.contract import HEADLINES, REQUIRED
from safealign_lib.course.metrics_io import (
    check_output_path,
    load,
    record_provenance,
    record_wall_time,
)
from safealign_lib.course.setup import _assigned
from safealign_lib.tooling import provenance

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell.

    ``cell_index`` (in the executed copy, which holds papermill's injected-parameters cell),
    ``ename`` and ``evalue`` come from papermill's ``PapermillExecutionError`` when it gave them.
    """

    def __init__(
        self,
        message: str,
        notebook: str = "",
        cell_index: int | None = None,
        ename: str = "",
        evalue: str = "",
    ):
        super().__init__(message)
        self.notebook, self.cell_index, self.ename, self.evalue = (
            notebook,
            cell_index,
            ename,
            evalue,
        )


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
    warns about unencrypted TCP after every notebook (Windows has no IPC transport). The
    sockets live in a fresh private folder: by default they are files named ``kernel-ipc-<n>``
    in the working directory (``notebooks/``), so two runs at once, started from the same
    checkout, collided there ("Invalid Signature" from a kernel that was not theirs)."""
    cfg = config_class()
    if os.name == "posix":
        cfg.KernelManager.transport = "ipc"
        cfg.KernelManager.ip = str(Path(tempfile.mkdtemp(prefix="safealign-ipc-")) / "kernel")
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
    # where the time goes (safealign_lib.worklog): one log per notebook, next to its copy
    log = out_dir / "worklog" / f"{path.name[:2]}.jsonl"
    log.parent.mkdir(exist_ok=True)
    log.write_text("")
    os.environ[worklog.ENV], os.environ[worklog.LABEL_ENV] = str(log), path.name[:2]
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
        index = getattr(err, "cell_index", None)
        ename, evalue = getattr(err, "ename", ""), getattr(err, "evalue", "")
        if index is not None:  # papermill's PapermillExecutionError says where and what
            src = str(getattr(err, "source", "")).strip().splitlines()
            where = f"cell {index} ({src[0][:60] if src else 'empty'}): {ename}: {evalue}"
        else:
            where = _failing_cell(out)
        raise NotebookFailed(
            f"{path.name} failed at {where} (executed copy: {out})", path.name, index, ename, evalue
        ) from err
    finally:
        for key in (worklog.ENV, worklog.LABEL_ENV):
            os.environ.pop(key, None)
    return RunRecord(path.name[:2], out, time.perf_counter() - t0)


def parse_params(
    pairs: Iterable[Sequence[str]] = (), files: Iterable[str | os.PathLike] = ()
) -> dict[str, object]:
    """Notebook parameters from YAML ``files`` (each a mapping), then ``(name, value)`` pairs,
    later ones winning. A value is read as a YAML literal: ``"[0, 1]"`` is a list, ``"3"`` an
    int, ``"null"`` None, ``"cpu"`` a string."""
    import yaml

    params: dict[str, object] = {}
    for f in files:
        p = Path(f).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"No parameter file at {p}; check the path given to --params.")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{p} is not valid YAML ({err}); fix the file.") from err
        if not isinstance(data, dict):
            raise ValueError(
                f"{p} holds a {type(data).__name__}; a parameter file maps names to values, "
                "e.g. `seeds: [0, 1]`."
            )
        params.update(data)
    for name, value in pairs:
        try:
            params[name] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(
                f'-p {name} {value!r} is not a YAML value ({err}); quote lists: -p {name} "[0, 1]".'
            ) from err
    bad = [k for k in params if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"Parameter names must be Python names, got {bad}.")
    return params


def declared_parameters(path: Path) -> set[str]:
    """The names a notebook's ``parameters`` cell declares."""
    for cell in json.loads(path.read_text()).get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return set(_assigned("".join(cell.get("source", ""))))
    return set()


def route_parameters(
    notebooks: Sequence[Path], params: Mapping[str, object]
) -> dict[Path, dict[str, object]]:
    """Each notebook's share of ``params``: the names its ``parameters`` cell declares (the
    notebooks reject undeclared names). A name no notebook declares is a ``ValueError``."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    unused = sorted(set(params) - set().union(*declared.values()))
    if unused:
        known = sorted(set().union(*declared.values()))
        raise ValueError(
            f"No selected notebook has parameter(s) {unused}; they have {known}. Check the "
            "spelling, or select the notebook that uses it."
        )
    return {nb: {k: v for k, v in params.items() if k in declared[nb]} for nb in notebooks}


def run_course(
    profile: str = "cpu",
    numbers: Sequence[str] | None = None,
    out_dir: Path | None = None,
    metrics_file: Path | None = None,
    timeout_s: int = 1200,
    extra: dict | None = None,
) -> list[RunRecord]:
    """Run the notebooks in order with ``profile``; metrics go to ``metrics_file``.

    ``extra`` holds notebook parameters (see :func:`route_parameters`). Prints each notebook's
    wall time and headline metrics as it finishes and stores its provenance in the metrics file.
    """
    out_dir = out_dir or build_dir() / "executed"
    mfile = (
        Path(metrics_file).resolve() if metrics_file is not None else build_dir() / "metrics.json"
    )
    notebooks = list_notebooks(numbers)
    own = sorted({"profile", "metrics_file"} & set(extra or {}))
    if own:  # the runner sets these itself; a second spelling would silently lose
        raise ValueError(f"Give {own} with the runner's options (--profile, --output), not -p.")
    routed = route_parameters(notebooks, dict(extra or {}))
    records = []
    for nb in notebooks:
        params = {"profile": profile, **routed[nb], "metrics_file": str(mfile)}
        print(f"running {nb.name} (profile {profile}) ...", flush=True)
        records.append(run_notebook(nb, params, out_dir, timeout_s))
        if records[-1].number in load(mfile):  # a notebook without metrics has no provenance
            record_provenance(records[-1].number, provenance.collect(profile, params), mfile)
            # one meaning of wall_s: the runner's (kernel start-up and imports included)
            record_wall_time(records[-1].number, records[-1].wall_s, mfile)
        head = headline_text(records[-1].number, load(mfile))
        print(f"  done in {records[-1].wall_s:.1f} s{': ' + head if head else ''}", flush=True)
    return records


def headline_text(number: str, metrics: Mapping[str, Mapping[str, float]]) -> str:
    """``key=value, ...`` of a notebook's headline metrics, and the required keys it lacks."""
    vals = metrics.get(number, {})
    head = ", ".join(f"{k}={vals[k]:.3g}" for k in HEADLINES.get(number, ()) if k in vals)
    missing = [k for k in REQUIRED.get(number, ()) if k not in vals]
    return head + (f"  [missing: {', '.join(missing)}]" if missing else "")


def summary_table(records: Sequence[RunRecord], metrics_file: Path | None = None) -> str:
    """A plain-text table: notebook, wall time, headline metrics."""
    m = load(metrics_file)
    lines = [f"{'notebook':<34} {'wall s':>7}  headline metrics", "-" * 100]
    for r in records:
        lines.append(f"{r.path.name:<34} {r.wall_s:>7.1f}  {headline_text(r.number, m)}")
    lines.append(f"{'total':<34} {sum(r.wall_s for r in records):>7.1f}")
    return "\n".join(lines)
