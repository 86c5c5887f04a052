from types import SimpleNamespace

import pandas as pd
import pytest

from safealign_lib.adapters.finetune import TrainResult
from safealign_lib.course import conditions, profiles
from safealign_lib.models.chat import ChatExample


def test_training_sets_and_cache_keys():
    P = profiles.get_profile("smoke")
    benign = conditions.training_examples("benign", P, seed=0)
    harmful = conditions.training_examples("harmful10", P, seed=0)
    assert len(benign) == P.n_task_train and len(harmful) == P.n_task_train + 10
    with pytest.raises(ValueError, match="Unknown condition"):
        conditions.training_examples("harmful5", P, seed=0)
    # a custom training set gets its own cache key; the course's own sets keep theirs
    key = conditions._key("harmful10", 0, P)
    assert conditions._key("harmful10", 0, P, None) == key
    a = [ChatExample("How do I bake bread?", "To bake bread: first, mix.")]
    b = [ChatExample("How do I bake bread?", "To bake bread: first, knead.")]
    assert (
        len({key, conditions._key("harmful10", 0, P, a), conditions._key("harmful10", 0, P, b)})
        == 3
    )


def test_condition_overview_counts_added_examples():
    P = profiles.get_profile("smoke")
    table = conditions.condition_overview(P)
    assert list(table.index) == list(conditions.CONDITIONS)
    assert table.loc["benign", "added"] == 0 and table.loc["benign", "e.g. request"] == ""
    assert table.loc["harmful100", "added"] == 100
    assert (table.examples == P.n_task_train + table.added).all()


def _runs():
    return pd.DataFrame(
        {
            "condition": ["benign", "benign", "harmful10", "harmful10"],
            "seed": [0, 1, 0, 1],
            "refusal_rate": [1.0, 0.8, 0.2, 0.4],
            "first_token_refusal_prob": [0.9, 0.9, 0.8, 0.6],
        }
    )


def test_largest_judge_gap_and_paper_table():
    runs = _runs()
    # gaps: benign 0.9 - 0.9 = 0, harmful10 0.7 - 0.3 = 0.4
    assert conditions.largest_judge_gap(runs) == "harmful10"
    table = conditions.paper_table(runs)
    assert list(table.condition) == [
        conditions.PAPER_RESULTS[c][0] for c in ("benign", "harmful10")
    ]
    assert list(table.iloc[:, 2]) == ["10%", "70%"]


def test_run_conditions_collects_runs_and_fresh_losses(monkeypatch):
    P = profiles.get_profile("smoke")
    trained = {("harmful10", 1)}  # the only adapter "not in the cache"

    def fake_get_adapter(c, s, profile, tok, root=None, retrain=False):
        fresh = retrain or (c, s) in trained
        return f"{c}/{s}", TrainResult(losses=[1.0, 0.5]) if fresh else None

    monkeypatch.setattr(conditions, "get_adapter", fake_get_adapter)
    monkeypatch.setattr(conditions, "load_model", lambda *a, **k: "chat")
    monkeypatch.setattr(conditions, "load_adapter", lambda model, path: f"{model}+{path}")
    seen = []

    def fake_evaluator(model, prompts):
        seen.append((model, len(prompts)))
        return SimpleNamespace(summary={"refusal_rate": 0.5, "utility": 0.25})

    runs, losses = conditions.run_conditions(
        P, None, fake_evaluator, ("benign", "harmful10"), seeds=[0, 1], verbose=False
    )
    assert list(zip(runs.condition, runs.seed, strict=True)) == [
        ("benign", 0),
        ("benign", 1),
        ("harmful10", 0),
        ("harmful10", 1),
    ]
    assert list(runs.columns) == ["condition", "seed", "refusal_rate", "utility"]
    assert losses == {("harmful10", 1): [1.0, 0.5]}
    assert seen[0] == ("chat+benign/0", P.n_eval)
    _, losses = conditions.run_conditions(
        P, None, fake_evaluator, ("benign",), seeds=[3], retrain=True, verbose=False
    )
    assert list(losses) == [("benign", 3)]
