"""The ``safealign`` command line: rebuild the data and the organism, run the course.

safealign data build [--force]     # data/splits/*.jsonl + pretrain.txt
safealign organism build [--force] # data splits + data/organism/{base,chat} (about 100 s)
safealign organism build --quick  # a 2-layer test build into build/organism-quick
safealign course [--profile cpu] [--only 00 01]
safealign course run [--profile smoke] [00 03] [-p seeds "[0, 1]"] [--params F.yaml] [--output DIR]
safealign course regress --baseline baselines/smoke.json [--metrics FILE] [--update]
safealign course exercises [--output DIR] [--force]  # exercises/ from the notebooks
safealign metrics                 # print build/metrics.json
safealign profile check gpu       # validate a profile without loading a model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from safealign_lib import config, data
from safealign_lib.course import metrics_io, profiles
from safealign_lib.models import organism
from safealign_lib.tooling import breakdown, regress, runner, site, times, workshop


def _refuse_overwrite(folder: str | Path, shipped: Path, force: bool, what: str) -> None:
    """Rebuilding into the shipped folders (or over existing files) needs ``--force``."""
    target = Path(folder).expanduser()
    exists = target.is_dir() and any(target.iterdir())
    if exists and not force:
        where = "the course's shipped " + what if target.resolve() == shipped.resolve() else what
        raise SystemExit(
            f"{target} already holds {where}; rebuilding would overwrite it. Pass --force to "
            "overwrite, or --out (and --data-out) to write elsewhere."
        )


def _data_build(args: argparse.Namespace) -> int:
    args.out = args.out or str(config.data_dir() / "splits")
    _refuse_overwrite(args.out, config.data_dir() / "splits", args.force, "data splits")
    out = data.write(data.generate(args.seed), args.out)
    print(f"wrote the course data to {out}")
    return 0


def _organism_build(args: argparse.Namespace) -> int:
    quick = config.build_dir() / "organism-quick"
    if args.out is None:  # a reduced build never lands on the shipped organism by default
        args.out = str(quick if args.quick else config.organism_dir())
    if args.data_out is None:
        args.data_out = str(quick / "splits" if args.quick else config.data_dir() / "splits")
    _refuse_overwrite(args.out, config.organism_dir(), args.force, "organism checkpoints")
    _refuse_overwrite(args.data_out, config.data_dir() / "splits", args.force, "data splits")
    s = organism.OrganismSettings(seed=args.seed)
    if args.quick:  # a reduced build for tests and quick experiments (not the shipped one)
        s = organism.OrganismSettings(seed=args.seed, base_steps=60, chat_steps=40, num_layers=2)
    course = data.generate(args.seed)
    data.write(course, args.data_out)
    info = organism.build(args.out, s, data=course, progress=not args.quiet)
    print(json.dumps(info, indent=2))
    return 0


def _run_and_report(profile: str, only: list[str] | None, **kw: object) -> int:
    """Run the notebooks (:func:`runner.run_course`), print the summary, or name the failure."""
    try:
        records = runner.run_course(profile, only, **kw)
    except runner.NotebookFailed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(runner.summary_table(records, kw.get("metrics_file")))
    if records:
        out = records[0].path.parent
        table = breakdown.course_breakdown(out, [r.number for r in records])
        table.to_csv(out / "breakdown.csv")
        print(f"\nwhere the time went (s; kinds in process-seconds, {out / 'breakdown.csv'}):")
        print(breakdown.breakdown_text(table))
    return 0


def _add_params(parser: argparse.ArgumentParser) -> None:
    """``-p NAME VALUE`` (repeatable) and ``--params FILE``: notebook parameters."""
    parser.add_argument(
        "-p",
        dest="param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help='a notebook parameter, VALUE read as YAML: -p seeds "[0, 1]" (repeatable)',
    )
    parser.add_argument("--params", action="append", default=[], help="a YAML file of parameters")


def _course(args: argparse.Namespace) -> int:
    metrics_file = Path(args.metrics_file) if args.metrics_file else None
    params = runner.parse_params(args.param, args.params)
    return _run_and_report(
        args.profile, args.only, metrics_file=metrics_file, timeout_s=args.timeout, extra=params
    )


def _course_run(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else config.build_dir()
    params = runner.parse_params(args.param, args.params)
    return _run_and_report(
        args.profile,
        (args.only or []) + args.notebooks,
        out_dir=out / "executed",
        metrics_file=out / "metrics.json",
        timeout_s=args.timeout,
        extra=params,
    )


def _course_prepare(args: argparse.Namespace) -> int:
    """Fill ``build/`` for a workshop: every notebook of the profile run once (its executed copy
    and metrics under ``build/prepare/``, apart from a learner's run), so that each later run
    reads its trained models and measurements from the cache."""
    out = config.build_dir() / "prepare"
    start = time.perf_counter()
    code = _run_and_report(
        args.profile,
        args.only or None,
        out_dir=out / "executed",
        metrics_file=out / "metrics.json",
        timeout_s=args.timeout,
        extra={},
    )
    if code == 0:
        print(
            f"\nprepared in {time.perf_counter() - start:.0f} s: the trained models and the "
            f"measurements of profile {args.profile!r} are in {config.build_dir()}; a notebook "
            "run now reads them instead of computing them again."
        )
    return code


def _course_times(args: argparse.Namespace) -> int:
    """Write the notebooks' Time lines and the README's course map from two runs' metrics."""
    changed = times.write_times(
        args.cold, args.cached, runner.NOTEBOOK_DIR, args.readme, args.executed
    )
    print("rewrote: " + (", ".join(changed) if changed else "nothing (already up to date)"))
    return 0


def _course_regress(args: argparse.Namespace) -> int:
    if args.rerun and not args.update:
        raise ValueError(
            "--rerun gives the rerun spread of a new baseline: it needs --update (a comparison "
            "reads only --metrics)."
        )
    return regress.run(
        args.baseline,
        args.metrics or [],
        update=args.update,
        reruns=args.rerun,
        profile=args.baseline_profile,
        notebooks=args.compare_only,
        show_all=args.all,
        partial=args.partial,
    )


def _course_exercises(args: argparse.Namespace) -> int:
    try:
        written, skipped = workshop.write_exercises(args.output, force=args.force)
    except FileExistsError as err:
        print(f"safealign: error: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    for path in skipped:
        print(f"skipped {path.name}: no '{workshop.BEGIN}' markers, so no exercise version")
    return 0


def _course_site(args: argparse.Namespace) -> int:
    build = config.build_dir()
    executed = Path(args.executed) if args.executed else build / "executed"
    out = Path(args.output) if args.output else build / "site"
    try:
        pages = site.build_site(executed, out, metrics_io.load(args.metrics))
    except FileNotFoundError as err:
        print(f"safealign: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'index.html'} and {len(pages)} notebook pages")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    print(json.dumps(metrics_io.load(args.file, must_exist=True), indent=2))
    return 0


def _profile_check(args: argparse.Namespace) -> int:
    p = profiles.get_profile(args.name)
    problems = profiles.validate(p)
    print(
        json.dumps(
            {k: v for k, v in asdict(p).items() if k not in ("lora", "train")},
            indent=1,
            default=str,
        )
    )
    for msg in problems:
        print(f"problem: {msg}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="safealign", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="course data").add_subparsers(dest="sub", required=True)
    db = d.add_parser("build", help="regenerate data/splits")
    db.add_argument("--out", default=None, help="default: data/splits")
    db.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    db.add_argument("--force", action="store_true", help="overwrite existing splits")
    db.set_defaults(fn=_data_build)

    o = sub.add_parser("organism", help="the model organism").add_subparsers(
        dest="sub", required=True
    )
    ob = o.add_parser("build", help="train base and chat checkpoints from scratch")
    ob.add_argument(
        "--out", default=None, help="default: data/organism (--quick: build/organism-quick)"
    )
    ob.add_argument("--data-out", default=None, help="default: data/splits (--quick: beside --out)")
    ob.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    ob.add_argument(
        "--quick", action="store_true", help="a reduced 2-layer build (seconds, for tests)"
    )
    ob.add_argument(
        "--force", action="store_true", help="overwrite existing checkpoints and splits"
    )
    ob.add_argument("--quiet", action="store_true")
    ob.set_defaults(fn=_organism_build)

    c = sub.add_parser("course", help="execute the notebooks with papermill")
    c.add_argument("--profile", default="cpu", choices=sorted(profiles.PROFILE_NAMES))
    c.add_argument("--only", nargs="*", help="notebook numbers, e.g. 00 01")
    c.add_argument("--metrics-file", default=None)
    c.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    _add_params(c)  # the notebook parameters work here too (`course --only 04 -p k_grid "[4]"`)
    c.set_defaults(fn=_course)
    commands = "{run,prepare,times,regress,exercises,site}"
    course_sub = c.add_subparsers(dest="course_cmd", metavar=commands)
    ce = course_sub.add_parser(
        "exercises", help="write the exercise notebooks (solutions replaced by stubs)"
    )
    ce.add_argument("--output", default=None, help="default: exercises/")
    ce.add_argument(
        "--force", action="store_true", help="overwrite exercise notebooks edited since"
    )
    ce.set_defaults(fn=_course_exercises)
    cs = course_sub.add_parser("site", help="render the executed notebooks to static HTML")
    cs.add_argument("--executed", default=None, help="default: build/executed")
    cs.add_argument("--metrics", default=None, help="default: build/metrics.json")
    cs.add_argument("--output", default=None, help="default: build/site")
    cs.set_defaults(fn=_course_site)
    cr = course_sub.add_parser("run", help="run notebooks: a profile, parameters, an output folder")
    cr.add_argument("notebooks", nargs="*", default=[], help="notebook numbers, e.g. 00 03")
    # SUPPRESS: `course --profile smoke run` keeps smoke instead of resetting it to the default
    keep = argparse.SUPPRESS
    cr.add_argument("--profile", default=keep, choices=sorted(profiles.PROFILE_NAMES))
    cr.add_argument("--only", nargs="*", default=keep, help="notebook numbers (or positional)")
    _add_params(cr)
    cr.add_argument("--output", default=None, help="executed/ and metrics.json (default build/)")
    cr.add_argument("--timeout", type=int, default=keep, help="seconds per cell")
    cr.set_defaults(fn=_course_run)
    cp = course_sub.add_parser(
        "prepare", help="before a workshop: run every notebook once to fill build/'s caches"
    )
    cp.add_argument("--profile", default=keep, choices=sorted(profiles.PROFILE_NAMES))
    cp.add_argument("--only", nargs="*", default=keep, help="notebook numbers (default: all)")
    cp.add_argument("--timeout", type=int, default=keep, help="seconds per cell")
    cp.set_defaults(fn=_course_prepare)
    ct = course_sub.add_parser(
        "times", help="write the Time lines and the course map from two runs' wall times"
    )
    ct.add_argument("--cold", required=True, help="metrics.json of a run from an empty build/")
    ct.add_argument("--cached", required=True, help="metrics.json of a second run on it")
    ct.add_argument("--readme", default="README.md", help="its course map (default README.md)")
    ct.add_argument(
        "--executed", help="the cold run's executed/ folder: the reading minutes measured on it"
    )
    ct.set_defaults(fn=_course_times)
    cg = course_sub.add_parser("regress", help="compare metrics with a baseline")
    cg.add_argument("--baseline", required=True, help="e.g. baselines/smoke.json")
    cg.add_argument("--metrics", nargs="+", help="default build/metrics.json; later files win")
    cg.add_argument("--update", action="store_true", help="write the baseline from the metrics")
    cg.add_argument("--rerun", action="append", default=[], help="(--update) a rerun's metrics")
    cg.add_argument(
        "--profile",
        dest="baseline_profile",
        choices=sorted(profiles.PROFILE_NAMES),
        help="(--update) the metrics' profile; default: from their provenance",
    )
    cg.add_argument("--only", dest="compare_only", nargs="*", help="compare these notebooks")
    cg.add_argument("--all", action="store_true", help="list every key, not only what moved")
    cg.add_argument(
        "--partial", action="store_true", help="(--update) leave out contract keys not recorded"
    )
    cg.set_defaults(fn=_course_regress)

    m = sub.add_parser("metrics", help="print the recorded metrics")
    m.add_argument("--file", default=None)
    m.set_defaults(fn=_metrics)

    p = sub.add_parser("profile", help="run profiles").add_subparsers(dest="sub", required=True)
    pc = p.add_parser("check", help="validate a profile")
    pc.add_argument("name", choices=sorted(profiles.PROFILE_NAMES))
    pc.set_defaults(fn=_profile_check)

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as err:
        # a user error (a bad path, number or file) gets one clear line, not a traceback
        print(f"safealign: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
