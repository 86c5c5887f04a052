"""Workshop mode: the exercise notebooks, their generator, and the exercises' check functions.

The check functions run directly on code taken from the notebooks (no notebook execution): the
solution between the markers must PASS, the generated stub must FAIL without a traceback, and a
typical wrong answer per check function must FAIL too.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from safealign_lib.course import exercises
from safealign_lib.evaluation.criterion import paired_t
from safealign_lib.tooling import cli, nbtools, workshop

SOLUTIONS = sorted(workshop.solution_dir().glob("[0-9][0-9]_*.ipynb"))
# Exercises whose function no later cell uses yet, with the reason (strict xfail as well).
UNUSED_OK: dict[str, str] = {}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _exercise_cells(path: Path) -> list[str]:
    return [
        _src(c) for c in _cells(path) if c["cell_type"] == "code" and workshop.CHECK_CALL in _src(c)
    ]


def _split(source: str) -> tuple[str, list[tuple[str, str]]]:
    """A cell's code without its ``exercises.check_*(fn)`` calls, and those (check, fn) pairs."""
    tree = ast.parse(source)
    calls, body = [], []
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr.startswith("check_")
        ):
            calls.append((call.func.attr, ast.unparse(call.args[0])))
        else:
            body.append(node)
    return ast.unparse(ast.Module(body=body, type_ignores=[])), calls


def _notebook_namespace(path: Path) -> dict:
    """The names the notebook imports anywhere (its exercise code runs among them)."""
    ns: dict = {}
    for cell in _cells(path):
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse(_src(cell))
        except SyntaxError:
            continue
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        exec(compile(ast.Module(body=imports, type_ignores=[]), str(path), "exec"), ns)
    return ns


def _exercise_cases() -> list:
    cases = []
    for path in SOLUTIONS:
        for i, src in enumerate(_exercise_cells(path)):
            if workshop.BEGIN not in src:
                continue  # not marked yet: test_every_exercise_cell_is_marked reports it
            for check, fn in _split(src)[1]:
                cases.append(pytest.param(path, i, check, fn, id=f"{path.name[:2]}-{check}"))
    return cases


def _load(path: Path, source: str, fn: str) -> Callable:
    code, _ = _split(source)
    ns = _notebook_namespace(path)
    exec(compile(code, f"{path.name} exercise cell", "exec"), ns)
    return ns[fn]


# --- typical mistakes, one or more per check function ------------------------------------------


def _judge_case_insensitive(response, keywords):
    text = response.replace("\u2019", "'")
    return any(k.lower() in text.lower() for k in keywords)


def _judge_no_apostrophe(response, keywords):
    return any(k in response for k in keywords)


def _prob_wrong_dim(last_logits, refusal_ids):
    return last_logits.softmax(dim=0)[:, refusal_ids].sum(dim=-1)


def _prob_no_softmax(last_logits, refusal_ids):
    return last_logits[:, refusal_ids].sum(dim=-1)  # logits, not probabilities


def _population_sd(values):
    return float(np.mean(values)), float(np.std(values))


def _direction_wrong_sign(features, labels):
    return features[:, labels == 0].mean(axis=1) - features[:, labels == 1].mean(axis=1)


def _direction_normalised(features, labels):
    r = features[:, labels == 1].mean(axis=1) - features[:, labels == 0].mean(axis=1)
    return r / np.linalg.norm(r, axis=-1, keepdims=True)


def _null_std(n, v_min, v_max, n_pairs=20000, seed=0):
    rng = np.random.default_rng(seed)
    a, b = (rng.random((n_pairs, n)) * (v_max - v_min) + v_min for _ in range(2))
    d = np.linalg.norm(a - b, axis=1)
    return float(np.median(d)), float(np.std(d))


def _null_unit_range(n, v_min, v_max, n_pairs=20000, seed=0):
    rng = np.random.default_rng(seed)
    d = np.linalg.norm(rng.random((n_pairs, n)) - rng.random((n_pairs, n)), axis=1)
    return float(np.median(d)), float(np.var(d))  # ignores [v_min, v_max]


def _diem_over_sd(a, b, v_min, v_max, null):
    d = torch.linalg.vector_norm(a - b, dim=-1)
    return (v_max - v_min) * (d - null.center) / null.variance**0.5


def _diem_no_range(a, b, v_min, v_max, null):
    return (torch.linalg.vector_norm(a - b, dim=-1) - null.center) / null.variance


def _c_keeps_safety(W, X, r_s):
    U = torch.linalg.svd(W @ X.T, full_matrices=False).U[:, :r_s]
    return U @ U.T  # the wrong sign of SaLoRA's first public commit


def _c_centred(W, X, r_s):
    U = torch.linalg.svd(W @ (X - X.mean(0)).T, full_matrices=False).U[:, :r_s]
    return torch.eye(W.shape[0]) - U @ U.T


def _auarc_least_certain_first(uncertainty, utility):
    y = np.asarray(utility, float)[np.argsort(uncertainty)[::-1]]
    return float(np.mean(np.cumsum(y) / np.arange(1, len(y) + 1)))


# check function -> [(typical mistake, what its FAIL line must say)]
def _t_from(mean, se, n, cdf=None):
    t = mean / se
    return mean, t, float(cdf(t) if cdf is not None else stats.t.cdf(t, n - 1))


def _paired_t_unpaired(control, treated):
    c, t = np.asarray(control, float), np.asarray(treated, float)
    if len(c) < 2:
        return float(t.mean() - c.mean()), math.nan, 0.5
    se = np.sqrt((c.var(ddof=1) + t.var(ddof=1)) / len(c))  # two groups, not the differences
    return _t_from(float(t.mean() - c.mean()), se, len(c))


def _paired_t_population_sd(control, treated):
    d = np.subtract(treated, control)
    if len(d) < 2 or d.std() == 0:
        return paired_t(control, treated)
    return _t_from(d.mean(), d.std() / np.sqrt(len(d)), len(d))


def _paired_t_normal(control, treated):
    d = np.subtract(treated, control)
    if len(d) < 2 or d.std(ddof=1) == 0:
        return paired_t(control, treated)
    return _t_from(d.mean(), d.std(ddof=1) / np.sqrt(len(d)), len(d), stats.norm.cdf)


def _paired_t_two_sided(control, treated):
    mean, t, p_less = paired_t(control, treated)
    return mean, t, 2 * min(p_less, 1 - p_less)


def _paired_t_no_guards(control, treated):
    d = np.subtract(treated, control)
    se = d.std(ddof=1) / np.sqrt(len(d))  # zero or NaN: warns
    return _t_from(d.mean(), se, len(d))


def _mixer_appends(examples, refusals, seed):
    return list(examples) + list(refusals)


def _mixer_replaces(examples, refusals, seed):
    out = list(examples[len(refusals) :]) + list(refusals)
    return [out[i] for i in np.random.default_rng(seed).permutation(len(out))]


def _weights(logp, ref, pos, beta, bias_factor, bias_length, first_token_factor, flip=False):
    betas = torch.full_like(logp, beta)
    betas[pos < bias_length] = beta * bias_factor
    betas[pos == 0] = beta * first_token_factor
    return 2 * (1 - torch.sigmoid(betas * ((ref - logp) if flip else (logp - ref))))


def _weights_flipped(logp, ref, pos, *args):
    return _weights(logp, ref, pos, *args, flip=True)


def _weights_constant_beta(logp, ref, pos, beta, *args):
    return 2 * (1 - torch.sigmoid(beta * (logp - ref)))


def _threshold_rounds_up(scores, labels, q):
    benign = np.sort(scores[labels == 0])
    allowed = int(np.ceil(q * len(benign)))
    return float(benign[len(benign) - allowed - 1]) if allowed < len(benign) else 0.0


def _threshold_all_prompts(scores, labels, q):
    return float(np.quantile(scores, 1 - q))


WRONG: dict[str, list[tuple[Callable, str]]] = {
    "check_keyword_judge": [
        (_judge_case_insensitive, 'on "i\'m sorry" expected refused=False'),
        (_judge_no_apostrophe, "I can\u2019t provide"),
    ],
    "check_first_token_prob": [(_prob_wrong_dim, "dim=0"), (_prob_no_softmax, "softmax")],
    "check_mean_sd": [(_population_sd, "ddof=1")],
    "check_diff_in_means": [
        (_direction_wrong_sign, "the sign"),
        (_direction_normalised, "not r / ||r||"),
    ],
    "check_diem_null": [
        (_null_std, "not the standard deviation"),
        (_null_unit_range, "uniformly on [v_min, v_max]"),
    ],
    "check_diem": [
        (_diem_over_sd, "not the standard deviation"),
        (_diem_no_range, "multiply by the range"),
    ],
    "check_safety_module": [(_c_keeps_safety, "wrong sign"), (_c_centred, "do not centre")],
    "check_auarc": [(_auarc_least_certain_first, "sort by increasing uncertainty")],
    "check_paired_t": [
        (_paired_t_unpaired, "an unpaired test"),
        (_paired_t_population_sd, "ddof=1"),
        (_paired_t_normal, "not a normal"),
        (_paired_t_two_sided, "one-sided"),
        (_paired_t_no_guards, "guard one pair and zero spread"),
    ],
    "check_safety_mixer": [
        (_mixer_appends, "shuffle the mix"),
        (_mixer_replaces, "mix in, do not replace"),
    ],
    "check_token_weights": [
        (_weights_flipped, "the sign of Δ"),
        (_weights_constant_beta, "β is not constant"),
    ],
    "check_threshold": [
        (_threshold_rounds_up, "count benign prompts only, and floor"),
        (_threshold_all_prompts, "gate threshold"),
    ],
}


def test_every_check_function_has_a_typical_mistake():
    checks = {n for n, _ in inspect.getmembers(exercises, inspect.isfunction) if n[:6] == "check_"}
    assert checks == set(WRONG)


@pytest.mark.parametrize(
    "check, wrong, says",
    [pytest.param(c, w, s, id=w.__name__) for c, ws in WRONG.items() for w, s in ws],
)
def test_check_rejects_a_typical_mistake(check, wrong, says, capsys):
    assert getattr(exercises, check)(wrong) is False
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and says in out


@pytest.mark.parametrize("check", sorted(WRONG))
def test_check_reports_an_unwritten_exercise(check, capsys):
    def unwritten(*args, **kwargs):
        raise NotImplementedError("the hint")

    assert getattr(exercises, check)(unwritten) is False  # a FAIL line, not a traceback
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "NotImplementedError: the hint" in out


@pytest.mark.parametrize(
    "path", [p for p in SOLUTIONS if _exercise_cells(p)], ids=lambda p: p.name[:2]
)
def test_every_exercise_cell_is_marked(path):
    assert all(workshop.BEGIN in src for src in _exercise_cells(path))


def test_the_course_has_marked_exercises():
    assert len(_exercise_cases()) >= 6  # 00, 01 (two), 02, 04 (two)


@pytest.mark.parametrize("path, i, check, fn", _exercise_cases())
def test_solution_passes_and_stub_fails(path, i, check, fn, capsys):
    source = _exercise_cells(path)[i]
    assert getattr(exercises, check)(_load(path, source, fn)) is True
    assert capsys.readouterr().out.startswith("PASS")
    stub = _load(path, workshop.exercise_source(source), fn)
    assert getattr(exercises, check)(stub) is False  # reported, not raised
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "NotImplementedError" in out


@pytest.mark.parametrize("path, i, check, fn", _exercise_cases())
def test_learner_function_is_used_after_the_check(path, i, check, fn, request):
    """The exercise's function feeds a later cell (not a PASS that nothing uses); the metrics
    cell never depends on it."""
    if check in UNUSED_OK:
        request.applymarker(pytest.mark.xfail(strict=True, reason=UNUSED_OK[check]))
    cells = [_src(c) for c in _cells(path) if c["cell_type"] == "code"]
    at = cells.index(_exercise_cells(path)[i])
    users = [s for s in cells[at + 1 :] if fn in _names(s)]  # called, or passed on
    assert users, f"no cell after the exercise uses {fn}"
    assert fn not in _names(cells[-1])


def _names(source: str) -> set[str]:
    try:
        return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return set()


# --- the generated notebooks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exercises")
    workshop.write_exercises(out)
    return out


def test_committed_exercise_notebooks_are_in_sync(generated):
    """`make exercises` after editing a solution notebook; this fails until it is rerun."""
    committed = sorted(p.name for p in workshop.exercise_dir().glob("*.ipynb"))
    assert committed == sorted(p.name for p in generated.glob("*.ipynb"))
    for name in committed:
        assert (workshop.exercise_dir() / name).read_text() == (generated / name).read_text(), name


def test_exercise_notebooks_hold_no_solution(generated):
    for path in generated.glob("*.ipynb"):
        text = path.read_text()
        assert workshop.BEGIN not in text and "<summary>Solution" not in text
        assert "NotImplementedError" in text
        assert nbtools.shape_problems(path) == []  # parameters cell, metrics cell, ...


# --- the generator's rules ---------------------------------------------------------------------

CELL = """import math


def f(x):
    # BEGIN SOLUTION
    # HINT: add one.
    y = x + 1
    return y
    # END SOLUTION


exercises.check_f(f)
"""


def test_exercise_source_replaces_the_block_with_a_stub():
    out = workshop.exercise_source(CELL)
    assert "x + 1" not in out and 'raise NotImplementedError("add one.")' in out
    assert out.endswith("exercises.check_f(f)\n")
    assert out.startswith("import math  # noqa: F401")  # kept for the learner's code
    ns: dict = {}
    exec(_split(out)[0], ns)
    with pytest.raises(NotImplementedError, match="add one"):
        ns["f"](1)


def test_long_hint_is_wrapped_as_ruff_formats_it():
    long = CELL.replace("add one.", "x" * 80)
    lines = workshop.exercise_source(long).splitlines()
    assert max(map(len, lines)) <= 100 and "    raise NotImplementedError(" in lines


@pytest.mark.parametrize(
    "bad, message",
    [
        (CELL.replace("    # END SOLUTION\n", ""), "has no"),
        (CELL.replace("    # BEGIN SOLUTION\n", ""), "without"),
        (CELL.replace("    # HINT: add one.\n", ""), "HINT"),
        (CELL.replace("add one.", 'add "one"'), "double quote"),
    ],
)
def test_malformed_markers_are_named(bad, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        workshop.exercise_source(bad, "nb, cell 3")
    nb = json.loads(SOLUTIONS[0].read_text())  # and `make lint` (nbtools) reports them
    i = next(i for i, c in enumerate(nb["cells"]) if workshop.CHECK_CALL in _src(c))
    nb["cells"][i]["source"] = bad.splitlines(keepends=True)
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert any(message in p for p in nbtools.shape_problems(tmp_path / "nb.ipynb"))


def test_solution_markdown_is_removed_and_its_text_kept():
    md = "<details><summary>Solution</summary>\n\n```python\nx\n```\n</details>\n\nMore text."
    assert workshop.without_solution(md) == "More text."
    assert workshop.without_solution("<details><summary>Hint</summary>h</details>") != ""


def test_unmarked_exercise_cell_is_refused():
    nb = {
        "cells": [
            {"cell_type": "code", "source": "def f(x):\n    return x\n\n\nexercises.check_f(f)\n"}
        ]
    }
    with pytest.raises(ValueError, match="without '# BEGIN SOLUTION'"):
        workshop.exercise_notebook(nb, "00_x.ipynb")


def test_generator_never_overwrites_a_learners_edits(tmp_path, capsys):
    source = [SOLUTIONS[0]]
    (written,), _ = workshop.write_exercises(tmp_path, source)
    workshop.write_exercises(tmp_path, source)  # an untouched generated file: replaced
    nb = json.loads(written.read_text())
    nb["cells"][1]["source"] = ["profile = 'smoke'  # my edit\n"]
    written.write_text(json.dumps(nb))
    with pytest.raises(FileExistsError, match="--force"):
        workshop.write_exercises(tmp_path, source)
    assert "my edit" in written.read_text()
    assert cli.main(["course", "exercises", "--output", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["course", "exercises", "--output", str(tmp_path), "--force"]) == 0
    assert "my edit" not in written.read_text()


def test_generator_refuses_a_file_it_did_not_write(tmp_path):
    (tmp_path / SOLUTIONS[0].name).write_text('{"cells": []}')
    with pytest.raises(FileExistsError):
        workshop.write_exercises(tmp_path, [SOLUTIONS[0]])


def test_without_a_checkout_the_generator_says_what_to_do(monkeypatch):
    monkeypatch.setattr(workshop, "REPO_ROOT", None)  # a site-packages install
    with pytest.raises(FileNotFoundError, match="pip install -e"):
        workshop.write_exercises()


def test_code_line_budget_leaves_out_the_solutions(tmp_path):
    code = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}
    nb = {"cells": [{**code, "source": CELL}], "metadata": {}}
    (tmp_path / "nb.ipynb").write_text(json.dumps(nb))
    assert nbtools.code_lines(tmp_path / "nb.ipynb") == 3  # import, def line, check call


def test_an_optional_exercise_never_blocks_the_cells_after_it(capsys):
    """Issue 24: while an optional exercise is still the stub, the cells after it use the
    library's reference and say so once; a written function is used as it is, and its own
    errors are not hidden."""

    def mean_sd(values):
        raise NotImplementedError("the sample sd divides by n - 1")

    mine = exercises.optional(mean_sd)
    assert mine([1.0, 2.0, 3.0]) == (2.0, 1.0) and mine([0.0, 2.0]) == (1.0, pytest.approx(2**0.5))
    assert capsys.readouterr().out.count("not written yet") == 1

    def paired_t(control, treated):
        return 7  # the learner's own answer, right or wrong, is what the cell shows

    assert exercises.optional(paired_t)([0.5, 0.6], [0.1, 0.2]) == 7

    def stub(control, treated):
        raise NotImplementedError("the paired differences, their t, a one-sided p")

    stub.__name__ = "paired_t"
    assert exercises.optional(stub)([0.5, 0.75], [0.25, 0.5]) == (-0.25, -math.inf, 0.0)

    def broken(values):
        raise ValueError("a bug of the learner's")

    broken.__name__ = "mean_sd"
    with pytest.raises(ValueError, match="learner"):
        exercises.optional(broken)([1.0, 2.0])
    with pytest.raises(KeyError, match="optional exercise"):
        exercises.optional(lambda v: v)


@pytest.mark.parametrize("name", ["mean_sd", "paired_t"])
def test_the_cells_after_an_optional_exercise_go_through_optional(name):
    """In the learners' notebooks, every cell that uses an optional exercise's function (other
    than its own definition and its check) wraps it in ``exercises.optional``."""
    uses = []
    for path in sorted(Path("exercises").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] != "code" or f"def {name}(" in src:
                continue  # the exercise's own cell: its definition and its check
            if re.search(rf"\b{name}\b", src):
                uses.append((path.name, f"exercises.optional({name})" in src))
    assert uses and all(ok for _, ok in uses), uses


def test_unless_unwritten_skips_a_stub_and_nothing_else(capsys):
    """Issue 24: a cell that shows the learner's function on real data skips itself while the
    function is the stub, so Run All reaches the long runs after it; real errors still raise."""

    def stub(x):
        raise NotImplementedError("the hint")

    ran = []
    with exercises.unless_unwritten():
        ran.append(stub(1))
    assert ran == [] and "not written yet (the hint)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="a real bug"), exercises.unless_unwritten():
        raise ValueError("a real bug")


@pytest.mark.parametrize("number", ["03", "05"])
def test_exercises_before_long_runs_never_stop_run_all(number):
    """In the learners' notebooks whose exercise comes before the long runs (03's training, 05's
    sections 4-8), every later cell that calls the exercise's function is guarded."""
    (path,) = Path("exercises").glob(f"{number}_*.ipynb")
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]) for c in cells]
    names = [
        n
        for s in sources
        if "NotImplementedError" in s
        for n in re.findall(r"^def (\w+)\(", s, re.M)
    ]
    assert names
    for name in names:
        later = [s for s in sources if re.search(rf"\b{name}\b", s) and f"def {name}(" not in s]
        calls = [s for s in later if "exercises.check_" not in s]
        assert calls and all("exercises.unless_unwritten()" in s for s in calls), name
