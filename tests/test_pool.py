"""The job pool: same results whichever process runs a job, errors surface, one thread each."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from safealign_lib import pool
from safealign_lib.course.profiles import get_profile
from safealign_lib.evaluation.evaluator import Evaluator
from safealign_lib.methods.salora import build_safety_module, collect_layer_inputs
from safealign_lib.models.loading import load_model, load_tokenizer
from safealign_lib.studies import conditions, salora_study


def _draw(seed: int) -> tuple[float, int]:
    """A job that seeds itself and reports its thread count."""
    torch.manual_seed(seed)
    return float(torch.randn(64, 64).matmul(torch.randn(64, 64)).sum()), torch.get_num_threads()


def _fail(x: int) -> int:
    if x == 2:
        raise ValueError("job 2 failed on purpose")
    return x


def test_results_do_not_depend_on_the_number_of_workers():
    jobs = [(s,) for s in range(5)]
    inline = pool.map_jobs(_draw, jobs, workers=1)
    side_by_side = pool.map_jobs(_draw, jobs, workers=2)
    assert [v for v, _ in side_by_side] == [v for v, _ in inline]
    assert {n for _, n in side_by_side} == {1}  # one torch thread in every process


def test_a_failing_job_raises_in_the_caller():
    with pytest.raises(ValueError, match="job 2 failed"):
        pool.map_jobs(_fail, [(i,) for i in range(4)], workers=2)


def test_a_job_that_cannot_travel_names_what_cannot():
    # without starting a process: the warning names the part that does not pickle
    with pytest.warns(UserWarning, match=r"argument 0 \(generator\) cannot be sent"):
        out = pool.map_jobs(_fail, [((x for x in ()),), ((x for x in ()),)], workers=2)
    assert len(out) == 2
    with pytest.warns(UserWarning, match="the function .a lambda"):
        assert pool.map_jobs(lambda x: x, [(1,), (2,)], workers=2) == [1, 2]


def test_jobs_run_here_leave_the_random_state_alone():
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    before = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    torch.manual_seed(1)
    pool.map_jobs(_draw, [(7,)], workers=1)
    after = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert after == before


def test_workers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(pool.WORKERS_ENV, "3")
    assert pool.default_workers() == 3
    monkeypatch.setenv(pool.WORKERS_ENV, "two")
    with pytest.raises(ValueError, match="SAFEALIGN_WORKERS"):
        pool.default_workers()
    monkeypatch.delenv(pool.WORKERS_ENV)
    assert pool.default_workers("cuda") == 1
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(pool, "memory_limit", lambda: 2 * 2**30)  # Binder's 2 GB: one process
    assert pool.default_workers() == 1
    monkeypatch.setattr(pool, "memory_limit", lambda: 24 * 2**30)
    assert pool.default_workers() == 2
    monkeypatch.setattr(pool.os, "cpu_count", lambda: 1)
    assert pool.default_workers() == 1
    with pytest.raises(ValueError, match="workers must be"):
        pool.map_jobs(_draw, [(0,)], workers=0)


def test_run_conditions_is_the_same_with_two_workers(tmp_path):
    """A real fine-tune and evaluation per (condition, seed): identical numbers from one process
    and from two."""
    P = get_profile("smoke")
    P = P.with_overrides(n_eval=8, n_task_eval=4, train=replace(P.train, steps=3))
    tok = load_tokenizer(P.chat_model)
    ev = Evaluator.from_profile(P, tok, task=conditions.task_examples("benign", P))
    runs = {}
    for workers in (1, 2):
        runs[workers], losses = conditions.run_conditions(
            P,
            tok,
            ev,
            ["benign"],
            [0, 1],
            root=tmp_path / str(workers),
            verbose=False,
            workers=workers,
        )
        assert sorted(losses) == [("benign", 0), ("benign", 1)]
    assert runs[1].equals(runs[2])


def test_salora_ablations_are_the_same_with_two_workers():
    """Notebook 03's Comparison ships itself, its safety module and the job to the workers:
    SaLoRA fine-tunes of the organism give the same rows from one process and from two."""
    P = get_profile("smoke").with_overrides(n_eval=6, n_task_eval=4)
    P = P.with_overrides(train=replace(P.train, steps=2))
    tok = load_tokenizer(P.chat_model)
    chat = load_model(P.chat_model)
    targets = list(P.lora.target_modules)
    train = conditions.training_examples("harmful10", P, 0)
    X_h = collect_layer_inputs(chat, tok, train[:8], targets)  # any examples with answers
    X_t = collect_layer_inputs(chat, tok, train[8:16], targets)
    ev = Evaluator.from_profile(P, tok, task=conditions.task_examples("harmful10", P))
    module = build_safety_module(chat, X_h, r_s=4)
    runs = pd.DataFrame(
        [
            {
                "method": m,
                "condition": "harmful10",
                "seed": 0,
                "refusal_rate": 0.5,
                "first_token_refusal_prob": 0.5,
                "utility": 0.5,
            }
            for m in ("LoRA", "SaLoRA")
        ]
    )
    tables = []
    for workers in (1, 2):
        cmp = salora_study.Comparison(P, tok, ev, chat, X_h, X_t, r_t=4, workers=workers)
        inv = {"LoRA": 1.0, "SaLoRA": 0.0}
        tables.append(cmp.ablations(module, runs, inv, "harmful10", 0, sweep=[2]))
    pd.testing.assert_frame_equal(tables[0][0], tables[1][0], check_exact=True)
    assert tables[0][1] == tables[1][1]  # the loss curves
