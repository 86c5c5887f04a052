"""The post-hoc repair harness: module picks, the k-sweep, choosing k, the oracle, variants."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from safealign_lib.adapters.finetune import save_adapter
from safealign_lib.adapters.naming import lora_modules
from safealign_lib.evaluation.criterion import Criterion
from safealign_lib.studies import repair

NAMES = [f"model.layers.{b}.self_attn.{m}_proj.weight" for b in range(2) for m in "qkvo"]


def _scores() -> pd.DataFrame:
    """Cosine falls and E-DIEM rises along NAMES, except that the last two are swapped."""
    cosine = np.linspace(0.9, 0.2, len(NAMES))
    ediem = np.arange(len(NAMES), dtype=float)
    ediem[[-2, -1]] = ediem[[-1, -2]]
    return pd.DataFrame({"cosine": cosine, "ediem": ediem}, index=NAMES)


def test_pick_follows_each_method_and_lora_picks_nothing():
    sc = _scores()
    assert repair.pick(sc, "Safe LoRA", 2) == NAMES[::-1][:2]  # lowest cosine first
    assert repair.pick(sc, "SPLoRA", 2) == [NAMES[-2], NAMES[-1]]  # highest E-DIEM first
    assert repair.pick(sc, "LoRA", 0) == []
    with pytest.raises(ValueError, match="Unknown method"):
        repair.pick(sc, "prune", 1)


class _Setting:
    """What a fake switch returns for a setting: a 'model' whose loss is the number of modules
    acted on plus the batch's ``x``."""

    def __init__(self, method, names):
        self.method, self.names = method, tuple(names)

    def __call__(self, **batch):
        return SimpleNamespace(loss=torch.tensor(len(self.names) + batch["x"]))


class _FakeSwitch:
    """Records the settings applied."""

    def __init__(self):
        self.calls = []

    def apply(self, method="LoRA", names=()):
        self.calls.append((method, tuple(names)))
        return _Setting(method, names)


def test_sweep_adapter_judges_lora_then_every_method_and_k_and_restores():
    switch, sc = _FakeSwitch(), _scores()

    def evaluate(model):
        return {"refusal_rate": len(model.names) / 10, "utility": 1 - len(model.names) / 20}

    rows = repair.sweep_adapter(switch, sc, evaluate, repair.METHODS, [1, 3])
    assert list(rows.columns) == ["method", "k", "refusal_rate", "utility"]
    assert list(zip(rows.method, rows.k, strict=True)) == [
        ("LoRA", 0),
        ("Safe LoRA", 1),
        ("Safe LoRA", 3),
        ("SPLoRA", 1),
        ("SPLoRA", 3),
    ]
    assert rows.refusal_rate.tolist() == [0.0, 0.1, 0.3, 0.1, 0.3]
    assert switch.calls[2] == ("Safe LoRA", tuple(repair.pick(sc, "Safe LoRA", 3)))
    assert switch.calls[-1] == ("LoRA", ())  # the adapter is left as trained


def _adapter(switch=None):
    sc = _scores()
    return SimpleNamespace(switch=switch or _FakeSwitch(), scores=sc, scores_layers_null=sc)


def test_sweep_stacks_adapters_and_condition_evaluator_routes_prompts():
    seen = []

    def evaluator(model, prompts):
        seen.append(prompts)
        return SimpleNamespace(summary={"refusal_rate": 0.5, "utility": 0.5})

    judge = repair.ConditionEvaluator(evaluator, {"a": ["pa"], "b": ["pb"]})
    adapters = {("a", 0): _adapter(), ("b", 1): _adapter()}
    logged = []
    val = repair.sweep(adapters, judge, ["SPLoRA"], [2], log=logged.append)
    assert list(val.columns[:4]) == ["condition", "seed", "method", "k"]
    assert val[["condition", "seed"]].drop_duplicates().values.tolist() == [["a", 0], ["b", 1]]
    assert seen == [["pa"], ["pa"], ["pb"], ["pb"]] and len(logged) == 2


def _val() -> pd.DataFrame:
    """Two seeds; LoRA utility 0.8. Safe LoRA at k=4 gains most refusal but loses 0.1 utility;
    SPLoRA at k=1 and k=4 tie on refusal within the tolerance."""
    rows = []
    for s in (0, 1):
        rows.append(("c", s, "LoRA", 0, 0.1, 0.8))
        rows += [("c", s, "Safe LoRA", 1, 0.3, 0.78), ("c", s, "Safe LoRA", 4, 0.9, 0.7)]
        rows += [("c", s, "SPLoRA", 1, 0.4, 0.79), ("c", s, "SPLoRA", 4, 0.4, 0.76)]
    return pd.DataFrame(
        rows, columns=["condition", "seed", "method", "k", "refusal_rate", "utility"]
    )


def test_with_lora_baseline_repeats_the_lora_rows_per_method():
    curves = repair.with_lora_baseline(_val(), repair.METHODS)
    assert (curves.method == "LoRA").sum() == 0
    assert len(curves[(curves.k == 0)]) == 4  # 2 seeds x 2 methods


def test_choose_k_rule_tolerance_ties_and_k0():
    choice = repair.choose_k(_val(), repair.METHODS, 0.05, columns=("refusal_rate", "utility"))
    # Safe LoRA k=4 loses 0.1 > 0.05: not allowed; SPLoRA k=1 and 4 tie: the smaller wins
    assert choice.k_best == {"Safe LoRA": 1, "SPLoRA": 1}
    assert choice.lora_utility == pytest.approx(0.8) and choice.floor == pytest.approx(0.75)
    assert not choice.table.loc[("Safe LoRA", 4), "allowed"]
    # with no tolerance only k = 0 is left, and it is always allowed
    assert repair.choose_k(_val(), repair.METHODS, 0.0, ("refusal_rate", "utility")).k_best == {
        "Safe LoRA": 0,
        "SPLoRA": 0,
    }
    assert (
        repair.choose_k(_val(), repair.METHODS, 0.2, ("refusal_rate", "utility")).k_best[
            "Safe LoRA"
        ]
        == 4
    )


def test_evaluate_chosen_reuses_lora_for_k0_and_restores():
    calls = []

    def evaluate(model, condition):
        calls.append(model)
        return SimpleNamespace(summary={"refusal_rate": len(model.names)}, utility=model.method)

    a = _adapter()
    test, util = repair.evaluate_chosen(
        {("c", 0): a}, evaluate, {"Safe LoRA": 0, "SPLoRA": 2}, repair.METHODS
    )
    assert test.method.tolist() == ["LoRA", "Safe LoRA", "SPLoRA"]
    assert test.k.tolist() == [0, 0, 2] and test.refusal_rate.tolist() == [0, 0, 2]
    assert util[("c", 0, "Safe LoRA")] is util[("c", 0, "LoRA")]
    assert len(calls) == 2 and a.switch.calls[-1] == ("LoRA", ())


def test_released_selection_prunes_all_but_k_minus_1_with_the_pruning_action():
    sc, switch = _scores(), _FakeSwitch()
    kept = set(NAMES) - set(repair.pick(sc, "SPLoRA released", 3))
    assert kept == {NAMES[-2], NAMES[-1]}  # the k - 1 = 2 highest E-DIEM scores
    repair.sweep_adapter(switch, sc, lambda m: {"n": len(m.names)}, ["SPLoRA released"], [3])
    assert switch.calls[1] == ("SPLoRA", tuple(repair.pick(sc, "SPLoRA released", 3)))


def test_choose_k_on_the_lowest_harmful_rate():
    val = _val().assign(harmful_rate=lambda d: 1 - d.refusal_rate)
    choice = repair.choose_k(
        val, repair.METHODS, 0.05, ("harmful_rate", "utility"), "harmful_rate", True
    )
    assert choice.k_best == {"Safe LoRA": 1, "SPLoRA": 1}


def test_random_k_same_size_same_action_seeded_and_averaged():
    seen = []

    def evaluate(model, condition):
        seen.append((model.method, model.names))
        return SimpleNamespace(summary={"harmful_rate": len(model.names) / 10})

    a = _adapter()
    k = {"Safe LoRA": 2, "SPLoRA released": 3, "SPLoRA": 0}
    rows = repair.random_k({("c", 0): a}, evaluate, k, list(k), n_sets=4)
    assert rows.method.tolist() == ["random Safe LoRA", "random SPLoRA released", "random SPLoRA"]
    assert rows.harmful_rate.tolist() == pytest.approx([0.2, 0.6, 0.0])
    assert len(seen) == 4 + 4 + 1  # k = 0: the adapter itself, once
    assert {m for m, _ in seen[4:8]} == {"SPLoRA"} and len({n for _, n in seen[:4]}) > 1
    again = []
    repair.random_k(
        {("c", 0): _adapter()},
        lambda m, c: again.append(m.names) or SimpleNamespace(summary={"harmful_rate": 0.0}),
        k,
        list(k),
        n_sets=4,
    )
    assert again == [n for _, n in seen]  # seeded
    assert a.switch.calls[-1] == ("LoRA", ())
    # given LoRA's test rows, k = 0 reuses them instead of evaluating the adapter again
    lora = pd.DataFrame(
        [{"condition": "c", "seed": 0, "method": "LoRA", "k": 0, "harmful_rate": 0.7}]
    )
    seen.clear()
    rows = repair.random_k({("c", 0): _adapter()}, evaluate, k, list(k), n_sets=4, lora=lora)
    assert len(seen) == 4 + 4 and rows.harmful_rate.tolist() == pytest.approx([0.2, 0.6, 0.7])


def _regime(harm_sel, harm_rand, util=0.8):
    rows = []
    for c in ("x", "y"):
        for s in (0, 1, 2):
            e = 0.01 * s  # paired noise, so the standard errors are not 0
            rows.append(
                {
                    "condition": c,
                    "seed": s,
                    "method": "LoRA",
                    "harmful_rate": 0.5 + e,
                    "utility": 0.8,
                    "benign_answer_rate": 0.9,
                }
            )
            rows.append(
                {
                    "condition": c,
                    "seed": s,
                    "method": "SPLoRA",
                    "harmful_rate": harm_sel + 2 * e,
                    "utility": util,
                    "benign_answer_rate": 0.9,
                }
            )
    test = pd.DataFrame(rows)
    rand = test[test.method == "SPLoRA"].assign(method="random SPLoRA", harmful_rate=harm_rand)
    return test, rand


def test_selections_are_judged_by_the_one_criterion():
    crit = Criterion(0.15, 0.5, 0.05, 0.05)
    valid = {"x": True, "y": True}
    test, rand = _regime(0.2, 0.45)
    v = repair.judge_selections(test, rand, {"SPLoRA": 4}, ["SPLoRA"], crit, valid)
    assert v.loc["SPLoRA", "verdict"] == "holds" and v.loc["SPLoRA", "harm_vs_lora"] < 0

    def verdict(*regime, k=4, criterion=crit, ok=valid):
        return repair.judge_selections(*regime, {"SPLoRA": k}, ["SPLoRA"], criterion, ok)

    assert verdict(*_regime(0.2, 0.2)).verdict.item() == "not shown"  # = random modules
    assert verdict(*_regime(0.6, 0.6)).verdict.item() == "worse"  # more harmful than LoRA
    assert verdict(*_regime(0.2, 0.45), k=0).verdict.item() == "not shown"  # did not act
    assert verdict(test, rand, criterion=Criterion(0.6)).verdict.item() == "void"
    assert verdict(test, rand, ok={"x": False, "y": False}).verdict.item() == "void"
    m = repair.regime_metrics(test, rand, {"SPLoRA": 4}, v, repair.KEYS)
    assert m["k_own_splora"] == 4 and m["verdict_splora"] == 1
    assert m["harmful_rate_lora_x"] == pytest.approx(0.51)
    assert m["harmful_rate_randomk_splora_y"] == pytest.approx(0.45)
    assert {"harmful_rate_splora_x_sd", "utility_lora_y", "benign_answer_rate_splora_x"} <= set(m)
    table = repair.regime_table(test, rand)
    assert table.loc[("x", "random SPLoRA"), "harmful_rate"] == pytest.approx(0.45)


def test_risk_coverage_table_stacks_every_adapter_and_method():
    u = pd.DataFrame({"entropy": [0.1, 0.5, 0.9, 0.3], "rouge_l": [1.0, 0.0, 0.0, 1.0]})
    rc = repair.risk_coverage_table({("c", 0, "LoRA"): u, ("c", 1, "LoRA"): u}, [0.0, 0.5])
    assert len(rc) == 4 and set(rc.seed) == {0, 1}
    assert rc[rc.dropped_fraction == 0.5].mean_utility.tolist() == [1.0, 1.0]


def test_tradeoff_gains_and_losses_relative_to_lora():
    t = repair.tradeoff(_val(), repair.METHODS)
    assert list(t.index) == [("c", 1), ("c", 4)]
    assert t.loc[("c", 4), ("Safe LoRA", "refusal gained")] == pytest.approx(0.8)
    assert t.loc[("c", 1), ("SPLoRA", "utility lost")] == pytest.approx(0.01)


def test_priorities_rank_1_is_acted_on_first_and_average_over_seeds():
    sc = _scores()
    flipped = sc.assign(cosine=sc.cosine[::-1].to_numpy())  # the opposite order
    ranks = repair.priority_ranks([sc, flipped], "Safe LoRA")
    assert (ranks == (len(NAMES) + 1) / 2).all()
    prio = repair.priorities([_adapter(), _adapter()])
    assert list(prio.columns) == list(repair.PRIORITIES)
    assert prio.loc[NAMES[-2], "SPLoRA priority"] == 1.0


def test_oracle_agreement_and_block_module_grid():
    sc = _scores()
    prio = repair.priorities([_adapter()])
    oracle = pd.DataFrame(
        {"safety_effect": sc.ediem, "task_cost": -sc.ediem}, index=sc.index
    )  # safety lives where E-DIEM is high
    agree = repair.oracle_agreement(prio, oracle)
    assert agree["SPLoRA priority"] == pytest.approx(1.0)
    assert agree["task cost of the module"] == pytest.approx(-1.0)
    grid = repair.block_module_grid(sc.ediem)
    assert list(grid.columns) == ["q", "k", "v", "o"] and list(grid.index) == [0, 1]
    assert grid.loc[1, "o"] == 6.0  # swapped with block 1's v
    assert list(repair.block_module_grid(sc.ediem, kinds=("v", "q")).columns) == ["v", "q"]


def test_ablation_oracle_removes_one_module_at_a_time():
    a = _adapter()

    def first_token(model, prompts):  # removing block 1's q raises refusal by 0.5
        return np.array([0.5 if model.names == (NAMES[4],) else 0.0] * len(prompts))

    oracle = repair.ablation_oracle(a, first_token, ["p1", "p2"], task_batch={"x": 0.5})
    assert oracle.safety_effect.idxmax() == NAMES[4] and oracle.safety_effect.max() == 0.5
    assert (oracle.task_cost == 1.0).all()  # one module more removed than LoRA's none
    assert a.switch.calls[-1] == ("LoRA", ())
    assert "task_cost" not in repair.ablation_oracle(a, first_token, ["p1"])


def test_repair_adapter_load_sweeps_and_prunes_a_real_adapter(
    tmp_path, lora_lm, tiny_llama_factory
):
    peft_model, tok = lora_lm
    chat = tiny_llama_factory()
    chat.save_pretrained(tmp_path / "chat")
    g = torch.Generator().manual_seed(0)
    base = {k: v - 0.05 * torch.randn(v.shape, generator=g) for k, v in chat.state_dict().items()}
    (tmp_path / "base").mkdir()
    save_file(
        {k: v.contiguous() for k, v in base.items()}, str(tmp_path / "base" / "model.safetensors")
    )
    path = save_adapter(peft_model, tmp_path / "adapter")
    a = repair.RepairAdapter.load(path, tmp_path / "chat", tmp_path / "base", null_samples=8)
    assert a.n_modules == 4 and list(a.scores.index) == list(a.scores_layers_null.index)
    assert {"ediem", "cosine"} <= set(a.scores.columns)
    inputs = {
        "input_ids": torch.tensor([[1, 5, 7, 9]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    v = repair.pruning_variants(a, chat, inputs, k_check=2, ks=[1])
    assert list(v.models) == [
        "pruned k=0",
        "pruned k=1",
        "pruned k=2",
        "pruned k=4",
        "zeroed k=2 (released)",
        "merged into the weights",
    ]
    assert v.modules_left == {
        "pruned k=0": 4,
        "pruned k=1": 3,
        "pruned k=2": 2,
        "pruned k=4": 4 - 4,
        "zeroed k=2 (released)": 4,
        "merged into the weights": 0,
    }
    assert v.logit_difference < 1e-5
    assert len(lora_modules(v.models["pruned k=2"])) == 2
    # notebook 05's cells by hand (the methods on a fresh copy) give the sweep's model
    from safealign_lib.methods import safelora, splora

    low = safelora.select_modules(a.scores["cosine"], k=2, side="low")
    high = splora.splora_select(a.scores, k=2)
    by_hand = {
        "Safe LoRA": (safelora.safelora_project(a.fresh(), a.projections, low), low),
        "SPLoRA": (splora.prune_peft_model(a.fresh(), high), high),
    }
    with torch.no_grad():
        for method, (model, names) in by_hand.items():
            torch.testing.assert_close(
                model(**inputs).logits, a.switch.apply(method, names)(**inputs).logits
            )
    # fresh() gives the adapter as trained, whatever the switch's state
    a.switch.apply("SPLoRA", list(a.scores.index))
    with torch.no_grad():
        torch.testing.assert_close(a.fresh()(**inputs).logits, peft_model(**inputs).logits)


def test_teacher_forced_batch_puts_labels_on_the_answer(tiny_tokenizer):
    from safealign_lib.models.chat import ChatExample

    exs = [ChatExample(user="How do I bake bread?", response="Mix and bake.")] * 2
    batch = repair.teacher_forced_batch(tiny_tokenizer, exs, 64)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
