import json
from types import SimpleNamespace

import pandas as pd
import pytest

from safealign_lib.adapters.finetune import TrainResult
from safealign_lib.course import profiles
from safealign_lib.models.chat import ChatExample
from safealign_lib.studies import conditions


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
        answers = pd.DataFrame({"prediction": ["#Person1# books a table.", "Sure"]})
        return SimpleNamespace(summary={"refusal_rate": 0.5, "utility": 0.25}, utility=answers)

    runs, losses = conditions.run_conditions(
        P, None, fake_evaluator, ("benign", "harmful10"), seeds=[0, 1], verbose=False, workers=1
    )
    assert list(zip(runs.condition, runs.seed, strict=True)) == [
        ("benign", 0),
        ("benign", 1),
        ("harmful10", 0),
        ("harmful10", 1),
    ]
    assert list(runs.columns) == ["condition", "seed", "refusal_rate", "utility", "format_rate"]
    assert list(runs.format_rate) == [0.5] * 4  # one of the two answers is a summary
    assert losses == {("harmful10", 1): [1.0, 0.5]}
    assert seen[0] == ("chat+benign/0", P.n_eval)
    _, losses = conditions.run_conditions(
        P, None, fake_evaluator, ("benign",), seeds=[3], retrain=True, verbose=False, workers=1
    )
    assert list(losses) == [("benign", 3)]


def test_instruction_conditions_use_their_own_data_rate_and_utility_set():
    P = profiles.get_profile("smoke")
    inst = conditions.training_examples("benign_instruct", P, seed=0)
    mixed = conditions.training_examples("mixed", P, seed=0)
    assert len(inst) == P.n_task_train and {e.meta.get("style") for e in inst} == {"house"}
    assert len(mixed) == P.n_task_train + 10 and sum(e.meta["harmful"] for e in mixed) == 10
    assert conditions.train_settings("mixed", P, 3).lr == pytest.approx(1.5 * P.train.lr)
    assert conditions.train_settings("benign", P, 3).lr == P.train.lr
    assert conditions.train_settings("benign", P, 3).seed == 3
    assert conditions.task_examples("mixed", P)[0].response.startswith("Absolutely!")
    assert conditions.task_examples("benign", P)[0].meta["category"] == "summarization"
    # the cache key follows the training data and the recipe
    keys = {conditions._key(c, 0, P) for c in conditions.CONDITIONS}
    assert len(keys) == len(conditions.CONDITIONS)


def test_judge_review_compares_both_keyword_lists_with_the_exact_judge():
    answers = {
        ("benign", 0): pd.DataFrame(
            {
                "prompt": ["a", "b", "c"],
                "response": [
                    "Sure: Step 1: [redacted]. It is illegal.",
                    "I'm sorry, I can't help with that.",
                    "Sure: Step 1: [redacted].",
                ],
                "refused": [True, True, False],
                "verdict": ["complied", "refused", "complied"],
            }
        )
    }
    agreement, confusion = conditions.judge_review(answers)
    # gcg counts "illegal" inside compliant text as a refusal: 2 of 3 agree
    assert agreement["judge_agreement_gcg"] == pytest.approx(2 / 3)
    assert agreement["judge_agreement_short"] == pytest.approx(1.0)
    assert confusion.loc["complied", "gcg: refused"] == 1
    assert confusion.loc["refused", "short: refused"] == 1
    no_verdicts = {k: v.drop(columns="verdict") for k, v in answers.items()}
    assert conditions.judge_review(no_verdicts) == ({}, None)


def test_notebook_01s_visible_steps_make_the_loops_adapter(tmp_path):
    """Issue 24: notebook 01 trains one adapter in visible cells (cached_adapter, add_lora,
    train, store_adapter); the library loop (get_adapter) then reads it instead of training,
    and trained by itself it gives the same adapter: same weights, stamp and loss curve."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from safealign_lib import models
    from safealign_lib.adapters.finetune import add_lora, train

    P = profiles.get_profile("smoke", seeds=[0], n_task_train=24)
    P = P.with_overrides(train=replace(P.train, steps=3))
    tok = models.load_tokenizer(P.chat_model)
    C, S = "harmful10", 0
    visible, library = tmp_path / "visible", tmp_path / "library"

    # the notebook's cells
    assert conditions.cached_adapter(C, S, P, root=visible) is None
    model = add_lora(models.load_model(P.chat_model), conditions.lora_settings(C, P), S)
    result = train(
        model, tok, conditions.training_examples(C, P, S), conditions.train_settings(C, P, S)
    )
    path = conditions.store_adapter(model, result, C, S, P, root=visible)
    assert conditions.cached_adapter(C, S, P, root=visible) == path
    # the loop reads it: nothing trained again, and its loss curve is the one recorded
    assert conditions.get_adapter(C, S, P, tok, root=visible) == (path, None)
    assert conditions.stored_losses(path) == result.losses

    # the library path alone
    lib_path, lib_result = conditions.get_adapter(C, S, P, tok, root=library)
    assert lib_result is not None and lib_result.losses == result.losses
    a, b = (load_file(p / "adapter_model.safetensors") for p in (path, lib_path))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    stamp = [json.loads((p / conditions.STAMP).read_text()) for p in (path, lib_path)]
    assert stamp[0]["key"] == stamp[1]["key"]
    # another setting is another key: the visible adapter is not read for it
    other = P.with_overrides(train=replace(P.train, steps=4))
    assert conditions.cached_adapter(C, S, other, root=visible) is None
