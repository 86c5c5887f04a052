"""Regression runs (tooling/regress.py): tolerances, comparison, baselines, the CLI; a real
injected fault (a keyword judge that never refuses) fails the smoke baseline; the same seeds give
the same metrics on notebook 01's training path."""

import dataclasses
import json
import math
import os
import shutil
import textwrap

import pandas as pd
import pytest

from safealign_lib.config import ANSWER_CACHE_ENV
from safealign_lib.course import metrics_io
from safealign_lib.tooling import cli, regress, runner

SMOKE = regress.BASELINE_DIR / "smoke.json"


def _run(**overrides):
    """Metrics of notebook 04: every contract key, three recorded extras (a count, a rate and a
    continuous value) and a timing key."""
    keys = regress.baseline_keys("smoke")["04"]
    extras = {"n_seeds": 3.0, "refusal_rate_x": 0.5, "extra_spread": 2.0, "wall_s": 9.0}
    extras["ediem_released_spread"] = 0.25  # a contract key that measures rounding noise
    m = dict.fromkeys(keys, 0.5) | extras
    return {"04": m | overrides}


def _baseline(**overrides):
    return regress.make_baseline([_run(**overrides)], "smoke", partial=True)  # 04 only


def _verdicts(rows):
    return {r.key: r.verdict for r in rows}


def test_tolerance_rule_per_kind():
    m = {"n_seeds": 3.0, "harmful_rate_x": 0.4, "harmful_rate_x_sd": 0.15, "spread": 4.0}
    floor = 2 / 48
    assert regress.tolerance("n_seeds", m, 0.0, floor).abs == 0.0  # counts are exact
    assert regress.tolerance("invariance_max_abs_err", m, 0.0, floor).abs == 1e-4
    seed = regress.tolerance("harmful_rate_x", m, 0.0, floor)
    assert seed.abs == pytest.approx(2 * 0.15 / math.sqrt(3)) and "harmful_rate_x_sd" in seed.how
    assert regress.tolerance("harmful_rate_x_sd", m, 0.0, floor).abs == pytest.approx(0.15)
    assert regress.tolerance("refusal_rate_y", m, 0.0, floor).abs == floor
    assert regress.tolerance("refusal_rate_y", m, 0.1, floor, runs=2).abs == pytest.approx(0.2)
    cont = regress.tolerance("spread", m, 0.0, floor)
    assert (cont.abs, cont.rel) == (0.0, 0.05) and cont.allowed(4.0) == pytest.approx(0.2)


def test_unchanged_metrics_pass_and_every_key_is_compared():
    rows = regress.compare(_baseline(), _run())
    assert not any(r.failed for r in rows)
    # every contract key and the recorded extra; the timing key is never compared
    assert len(rows) == len(regress.baseline_keys("smoke")["04"]) + 3
    assert "wall_s" not in _verdicts(rows)


def test_absolute_and_relative_tolerances_bound_the_move():
    base, floor = _baseline(), 2 / 48  # rate: absolute floor; continuous: 5% relative
    inside = _run(refusal_rate_x=0.5 + floor * 0.99, extra_spread=2.0 * 1.049)
    assert not any(r.failed for r in regress.compare(base, inside))
    outside = _run(refusal_rate_x=0.5 - floor * 1.01, extra_spread=2.0 * 0.949)
    v = _verdicts(regress.compare(base, outside))
    assert v["refusal_rate_x"] == v["extra_spread"] == "MOVED"


def test_missing_fails_new_passes_nan_fails():
    run = _run(diem_null_var_ratio_n4096_vs_n16=math.nan, brand_new=1.0, latency_ratio_x=2.0)
    del run["04"]["ediem_empirical_spread"]
    rows = regress.compare(_baseline(), run)
    v = _verdicts(rows)
    assert v["ediem_empirical_spread"] == "MISSING"
    assert v["diem_null_var_ratio_n4096_vs_n16"] == "NOT FINITE"
    assert v["brand_new"] == "new" and "latency_ratio_x" not in v
    assert {r.key for r in rows if r.failed} == {
        "ediem_empirical_spread",
        "diem_null_var_ratio_n4096_vs_n16",
    }
    table = regress.format_table(rows)
    assert "MISSING" in table and "brand_new" in table and "1 missing" in table


def test_a_missing_notebook_fails_and_an_unknown_one_is_new():
    base = _baseline()
    rows = regress.compare(base, {"07": {"x_rate": 1.0}})
    assert {r.verdict for r in rows if r.notebook == "04"} == {"MISSING"}
    assert [(r.notebook, r.key, r.verdict) for r in rows if r.notebook == "07"] == [
        ("07", "x_rate", "new")
    ]
    assert regress.compare(base, {}, notebooks=["00"]) == []


def test_baseline_needs_every_contract_key_or_partial():
    run = _run()
    del run["04"]["ediem_empirical_spread"]
    with pytest.raises(ValueError, match="04:ediem_empirical_spread"):
        regress.make_baseline([run], "smoke")
    base = regress.make_baseline([run], "smoke", partial=True)
    assert "04:ediem_empirical_spread" in base["left_out"] and "00 (no metrics)" in base["left_out"]


def test_rerun_spread_widens_the_tolerance():
    base = regress.make_baseline([_run(), _run(extra_spread=2.03)], "smoke", partial=True)
    spec = base["notebooks"]["04"]["extra_spread"]
    assert spec["rel"] == 0.05 and spec["abs"] == pytest.approx(0.06)
    assert "over 2 runs" in spec["how"]


def test_write_refuses_to_overwrite_and_load_checks(tmp_path):
    f = tmp_path / "b.json"
    regress.write_baseline(f, _baseline())
    with pytest.raises(FileExistsError, match="--update"):
        regress.write_baseline(f, _baseline())
    assert regress.load_baseline(f)["profile"] == "smoke"
    f.write_text(json.dumps({"notebooks": {}}))
    with pytest.raises(ValueError, match="not a baseline"):
        regress.load_baseline(f)
    with pytest.raises(FileNotFoundError, match="--update"):
        regress.load_baseline(tmp_path / "none.json")


def _metrics_file(path, run, profile="smoke"):
    for num, values in run.items():
        metrics_io.record(num, values, path)
        metrics_io.record_provenance(num, {"profile": profile, "commit": "abc"}, path)
    return path


def test_cli_compares_updates_and_reports_provenance(tmp_path, capsys):
    m = _metrics_file(tmp_path / "m.json", _run())
    b = tmp_path / "b.json"
    args = ["course", "regress", "--baseline", str(b), "--metrics", str(m)]
    assert cli.main(args) == 2  # no baseline yet: a one-line error, nothing written
    assert not b.exists() and "--update" in capsys.readouterr().err
    assert cli.main([*args, "--update"]) == 2  # notebook 04 only: needs --partial
    assert cli.main([*args, "--update", "--partial", "--profile", "cpu"]) == 2  # not its profile
    assert cli.main([*args, "--update", "--partial"]) == 0 and b.is_file()  # profile: provenance
    assert cli.main(args) == 0
    before = b.read_text()
    moved = _metrics_file(tmp_path / "m2.json", _run(ediem_empirical_spread=0.9))
    # the runner records provenance after the metrics; a new commit differs
    metrics_io.record_provenance("04", {"profile": "smoke", "commit": "def"}, moved)
    capsys.readouterr()
    assert cli.main(["course", "regress", "--baseline", str(b), "--metrics", str(moved)]) == 1
    out = capsys.readouterr().out
    assert "04:ediem_empirical_spread" in out and "MOVED" in out and "commit: abc -> def" in out
    assert b.read_text() == before  # a comparison never writes the baseline


def test_shipped_baselines_expect_only_current_contract_keys():
    # contract keys added since a baseline was made are reported as new (they pass); a key the
    # contract dropped would fail every run as MISSING until the baseline is rewritten
    for profile in ("smoke", "cpu"):
        base = regress.load_baseline(regress.BASELINE_DIR / f"{profile}.json")
        assert base["profile"] == profile and len(base["notebooks"]) >= 6
        current = regress.baseline_keys(profile)
        specs = {(n, k): v for n, e in base["notebooks"].items() for k, v in e.items()}
        assert len(specs) > 150 and all(spec["how"] for spec in specs.values())
        stale = [nk for nk, v in specs.items() if v["contract"] and nk[1] not in current[nk[0]]]
        assert not stale, f"rewrite baselines/{profile}.json (README, 'Regression runs')"


def test_noise_keys_are_left_out_with_their_reason_and_spread():
    base = regress.make_baseline(
        [_run(ediem_released_spread=0.24), _run(ediem_released_spread=0.31)], "smoke", partial=True
    )
    assert "ediem_released_spread" not in base["notebooks"]["04"]
    (entry,) = [e for e in base["left_out"] if e.startswith("04:ediem_released_spread")]
    assert "rounding" in entry and "spread over these 2 runs 0.07" in entry
    # never compared, never reported as new; a key beside it still is
    v = _verdicts(regress.compare(base, _run(ediem_released_spread=5.0, extra_spread=5.0)))
    assert "ediem_released_spread" not in v and v["extra_spread"] == "MOVED"


def test_shipped_baselines_hold_every_recorded_key_or_say_why():
    # every key a run of the profile records (tests/metric_keys.json: the contract's required
    # keys) is in each committed baseline, or in its left_out with a reason
    recorded = json.loads((regress.BASELINE_DIR.parent / "tests" / "metric_keys.json").read_text())
    for profile in ("smoke", "cpu"):
        base = regress.load_baseline(regress.BASELINE_DIR / f"{profile}.json")
        held = regress.baseline_keys(profile)
        lacking = [
            f"{n}:{k}"
            for n, keys in held.items()
            for k in keys
            if k in recorded.get(n, ()) and k not in base["notebooks"].get(n, {})
        ]
        reasons = [e for e in base["left_out"] if "(" in e]
        unexplained = [k for k in lacking if not any(e.startswith(k + " (") for e in reasons)]
        assert not unexplained, f"baselines/{profile}.json lacks {unexplained[:5]}"


def _plant(tmp_path, monkeypatch, code: str):
    """A ``sitecustomize`` running ``code`` in every kernel and pool worker the test starts (on
    PYTHONPATH); returns the file the hook writes, proof that the change was planted."""
    hook, marker = tmp_path / "hook", tmp_path / "kernel_was_patched"
    hook.mkdir()
    body = (
        textwrap.dedent(code) + f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    )
    (hook / "sitecustomize.py").write_text(body)
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), old])))
    return marker


@pytest.mark.notebook
def test_a_judge_that_never_refuses_fails_the_smoke_regression(tmp_path, monkeypatch):
    """A real fault, injected into the notebook's kernel (not an edited number): a
    ``sitecustomize`` on the kernel's PYTHONPATH makes the keyword judge never refuse."""
    marker = _plant(
        tmp_path,
        monkeypatch,
        """
        from safealign_lib.evaluation import judges

        judges.KeywordJudge.__call__ = lambda self, prompts, responses: [False] * len(responses)
        """,
    )
    monkeypatch.setenv("SAFEALIGN_BUILD", str(tmp_path / "build"))  # never a developer's build/
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(tmp_path / "build" / "answers"))
    mfile = tmp_path / "metrics.json"
    nb = runner.list_notebooks(["00"])[0]
    runner.run_notebook(nb, {"profile": "smoke", "metrics_file": str(mfile)}, tmp_path, 600)
    assert marker.is_file(), "the kernel did not inherit PYTHONPATH: the fault was not injected"
    rows = regress.compare(regress.load_baseline(SMOKE), metrics_io.load(mfile), ["00"])
    failed = {r.key for r in rows if r.failed}
    assert {"chat_refusal_rate_harmful_heldout", "chat_refusal_rate_harmful_unseen_tasks"} <= failed
    assert len(rows) >= 7


@pytest.mark.notebook
def test_a_planted_learning_rate_change_fails_the_smoke_regression(
    tmp_path, monkeypatch, smoke_run, smoke_build
):
    """Issue 25: the tolerances are not so loose that a real training change passes, and a
    changed parameter invalidates exactly what it touches. The learning rate of one condition
    (harmful10) is planted at 1.5x in the kernel and in its pool workers (a ``sitecustomize``,
    as above); notebook 01 runs on a copy of the smoke run's build folder (its adapters and its
    remembered answers and fine-tunes), so it retrains the harmful10 adapters (their cache key
    covers the settings) and reads every other one, and no answer of the old harmful10 adapters
    is served for the new ones (the answers' key covers the weights)."""
    marker = _plant(
        tmp_path,
        monkeypatch,
        """
        from safealign_lib.studies import conditions

        conditions.LR_SCALE["harmful10"] = 1.5
        """,
    )
    build = tmp_path / "build"
    shutil.copytree(smoke_build / "adapters", build / "adapters")
    # the remembered answers and fine-tunes too: the planted change must not be served from them
    shutil.copytree(smoke_build / "answers", build / "answers")
    stamps = sorted((build / "adapters" / "smoke").glob("*/seed*/safealign_run.json"))
    before = {p: p.read_text() for p in stamps}
    monkeypatch.setenv("SAFEALIGN_BUILD", str(build))
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(build / "answers"))
    mfile = tmp_path / "metrics.json"
    nb = runner.list_notebooks(["01"])[0]
    runner.run_notebook(nb, {"profile": "smoke", "metrics_file": str(mfile)}, tmp_path, 900)
    assert marker.is_file(), "the kernel did not inherit PYTHONPATH: the change was not planted"
    rows = regress.compare(regress.load_baseline(SMOKE), metrics_io.load(mfile), ["01"])
    failed = {r.key for r in rows if r.failed}
    assert any("harmful10" in k for k in failed), "a 1.5x learning rate passed the comparison"
    # the other conditions were read from the cache, as trained before: their keys still match
    assert not any(k.endswith("_benign") for k in failed), sorted(failed)
    retrained = sorted(p.parent.parent.name for p in stamps if p.read_text() != before[p])
    assert retrained == ["harmful10"] * 2, retrained  # both smoke seeds, nothing else
    assert len(stamps) > 10


@pytest.mark.notebook
def test_notebook_04_agrees_with_one_worker(tmp_path, monkeypatch, smoke_run, smoke_build):
    """Issue 25: the regression keys do not depend on how many processes a machine runs. The
    session's smoke run used the default (two workers on the CPU); notebook 04 (the E-DIEM
    scores, whose float32 spread once moved with the summation order) runs again with
    ``SAFEALIGN_WORKERS=1`` on a copy of that run's adapters, and both pass the smoke baseline
    with the same values. (Training with one and two workers: tests/test_pool.py.)"""
    build = tmp_path / "build"
    shutil.copytree(smoke_build / "adapters", build / "adapters")
    monkeypatch.setenv("SAFEALIGN_BUILD", str(build))
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(build / "answers"))
    monkeypatch.setenv("SAFEALIGN_WORKERS", "1")
    mfile = tmp_path / "metrics.json"
    nb = runner.list_notebooks(["04"])[0]
    runner.run_notebook(nb, {"profile": "smoke", "metrics_file": str(mfile)}, tmp_path, 600)
    one = metrics_io.load(mfile)["04"]
    rows = regress.compare(regress.load_baseline(SMOKE), {"04": one}, ["04"])
    assert rows and not [r.key for r in rows if r.failed]
    two = smoke_run[1]["04"]
    guarded = [r.key for r in rows if r.verdict != "new"]
    assert len(guarded) >= 5
    assert {k: one[k] for k in guarded} == pytest.approx({k: two[k] for k in guarded}, rel=1e-6)


def test_same_seed_same_metrics_on_notebook_01s_training_path(tmp_path):
    """Notebook 01's own code path (``conditions.run_conditions``: train, save, reload,
    evaluate) twice with the same seed on the organism: identical losses and metrics. (The
    library-level check on a random model: tests/test_finetune.py.)"""
    from safealign_lib import data, models
    from safealign_lib.course import profiles
    from safealign_lib.evaluation import Evaluator
    from safealign_lib.studies import conditions

    P = profiles.get_profile("smoke", seeds=[0], n_eval=12, n_task_eval=6, n_task_train=24)
    P = P.with_overrides(train=dataclasses.replace(P.train, steps=4))
    tok = models.load_tokenizer(P.chat_model)
    ev = Evaluator.from_profile(P, tok, task=data.load_split("task_test")[: P.n_task_eval])
    results = [
        conditions.run_conditions(
            P, tok, ev, conditions=("harmful10",), root=tmp_path / str(i), verbose=False
        )
        for i in range(2)
    ]
    (runs_a, losses_a), (runs_b, losses_b) = results
    assert len(losses_a[("harmful10", 0)]) == 4  # both runs trained (no shared cache)
    assert losses_a == losses_b
    pd.testing.assert_frame_equal(runs_a, runs_b, check_exact=True)
