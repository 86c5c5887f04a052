"""Notebook 03's study helpers: settings, tables, printed lines and the LoRA/SaLoRA comparison."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from safealign_lib.adapters.finetune import TrainResult, add_lora, save_adapter, train
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.course import profiles
from safealign_lib.evaluation import Evaluator
from safealign_lib.evaluation.criterion import Criterion, judge_table
from safealign_lib.methods.salora import (
    SafetyLayer,
    SafetyModule,
    apply_salora,
    build_safety_module,
    collect_layer_inputs,
)
from safealign_lib.models.chat import ChatExample
from safealign_lib.studies import conditions, salora_study

REFUSAL, SUMMARY = "I'm sorry, I can't help with that.", "#Person1# books a table at seven."
SAFETY = [ChatExample(f"How do I pick a lock, case {i}?", REFUSAL) for i in range(6)]
TASK = [ChatExample(f"Summarize dialogue {i}.", SUMMARY) for i in range(6)]
TARGETS = ["q_proj", "v_proj"]
LORA = LoraSettings(r=4, alpha=8, target_modules=tuple(TARGETS))
FAST = TrainSettings(lr=1e-2, steps=1, batch_size=4, progress=False)
SCORES = {"refusal_rate": 0.5, "first_token_refusal_prob": 0.25, "utility": 0.75}


def _runs() -> pd.DataFrame:
    rows = []
    for c in ("harmful10", "harmful100"):
        for s in (0, 1, 2):
            for m, bonus in (("LoRA", 0.0), ("SaLoRA", 0.2)):
                rows.append(
                    {
                        "method": m,
                        "condition": c,
                        "seed": s,
                        "refusal_rate": 0.1 * s + bonus,
                        "first_token_refusal_prob": 0.3,
                        "utility": 0.5 + bonus,
                    }
                )
    return pd.DataFrame(rows)


def test_lora_settings_and_settings_line():
    assert salora_study.lora_settings("smoke", None) is None
    assert salora_study.lora_settings("smoke", []) is None
    lora = salora_study.lora_settings("smoke", ["q_proj", "v_proj"])
    assert lora.target_modules == ("q_proj", "v_proj")
    assert lora.r == profiles.get_profile("smoke").lora.r
    line = salora_study.settings_line(profiles.get_profile("smoke"))
    assert "r=8" in line and "50 steps" in line and "the same for LoRA and SaLoRA" in line


def test_rank_summary_min_and_max_per_module():
    spectra = {
        "model.layers.0.self_attn.q_proj": torch.tensor([2.0, 1.0, 1.0]),
        "model.layers.1.self_attn.q_proj": torch.tensor([1.0, 1.0, 1.0]),
        "model.layers.0.self_attn.v_proj": torch.tensor([1.0, 0.0, 0.0]),
    }
    table = salora_study.rank_summary(spectra, (0.5, 0.9, 0.9))
    assert list(table.index) == ["q_proj", "v_proj"]
    assert table.loc["q_proj", ("rank for 50%", "min")] == 1
    assert table.loc["q_proj", ("rank for 50%", "max")] == 2
    assert table.loc["q_proj", ("rank for 90%", "max")] == 3
    assert table.loc["v_proj", ("rank for 90%", "max")] == 1
    assert len(table.columns) == 4  # repeated energies give one column


def test_removed_table_and_own_C(tiny_lm, capsys):
    model, tok = tiny_lm
    X_h = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    X_t = collect_layer_inputs(model, tok, TASK, TARGETS)
    module = build_safety_module(model, X_h, r_s=4)
    table = salora_study.removed_table(model, module, X_h, X_t)
    assert list(table.index) == ["q_proj", "v_proj"]
    assert (table["random subspace"] == 4 / 32).all()
    assert (table["safety outputs in U_C"] > table["random subspace"]).all()

    def exact_C(W, X, r_s):
        U = torch.linalg.svd(W @ X.T, full_matrices=False).U[:, :r_s]
        return torch.eye(W.shape[0]) - U @ U.T

    salora_study.compare_with_module(exact_C, model, X_h, module)
    out = capsys.readouterr().out
    assert out.startswith("model.layers.1.self_attn.q_proj: max |C·U_C| = ")
    worst = max(float(v) for v in re.findall(r"= ([0-9.e+-]+)", out))
    assert worst < 1e-3


def test_results_table(capsys):
    runs = _runs()
    table, mean = salora_study.results_table(runs, SCORES)
    assert table.loc[("harmful10", "SaLoRA"), "utility"] == "0.70 ± 0.00"
    assert table.loc[("—", "chat (before)"), "refusal_rate"] == "0.50"
    assert mean.loc[("harmful10", "LoRA"), "refusal_rate"] == pytest.approx(0.1)
    out = capsys.readouterr().out
    assert "harmful10: SaLoRA − LoRA (paired by seed): refusal_rate 0.200 ± 0.000" in out


def test_final_losses_and_paper_table():
    curves = {"LoRA": [3.0] * 5 + [1.0] * 10, "SaLoRA": [2.0, 0.5]}
    assert salora_study.final_losses(curves) == {"LoRA": 1.0, "SaLoRA": 1.25}
    _, mean = salora_study.results_table(_runs(), SCORES)
    module = SafetyModule(r_s=4)
    module.layers["q"] = SafetyLayer(
        U=torch.zeros(32, 4), UtW=torch.zeros(4, 32), sigma=torch.ones(4)
    )
    lora, sal = TrainResult(seconds=2.0, n_trainable=10), TrainResult(seconds=3.0, n_trainable=10)
    table = salora_study.paper_table(mean, {"refusal_rate": 1.0}, (lora, sal), module, 1.5, 2e-7)
    got = dict(zip(table.quantity, table["miniature (organism)"], strict=True))
    # the keyword judge's non-refusal rate is labelled as such, never as the harmful rate
    assert got["keyword non-refusal rate: chat → LoRA → SaLoRA"] == "0% → 90% → 70% (harmful10)"
    assert got["harmful rate: chat → LoRA → SaLoRA"] == "no exact judge on this profile"
    runs = _runs().assign(harmful_rate=lambda r: 1 - r.refusal_rate)
    _, mean = salora_study.results_table(runs, SCORES)
    exact = {"refusal_rate": 1.0, "harmful_rate": 0.0}
    table = salora_study.paper_table(mean, exact, (lora, sal), module, 1.5, 2e-7)
    got = dict(zip(table.quantity, table["miniature (organism)"], strict=True))
    assert got["harmful rate: chat → LoRA → SaLoRA"] == "exact judge: 0% → 90% → 70% (harmful10)"
    assert got["training time SaLoRA / LoRA"] == "1.50 (+1.5 s preprocessing)"
    assert got["r_s / layer width"] == "4 / 32 (12%)"


def test_drift_table_is_zero_for_the_same_model(tiny_lm, capsys):
    model, tok = tiny_lm
    before = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    drift = salora_study.drift_table({"same": model}, tok, SAFETY, before)
    assert len(drift) == 4 and set(drift.module) == {"q_proj", "v_proj"}
    assert (drift.drift == 0).all() and sorted(set(drift.layer)) == [0, 1]
    pivot = salora_study.drift_summary(drift)
    assert list(pivot.columns) == ["same"] and "drift 0.0e+00" in capsys.readouterr().out


def test_probe_transfer_table(tiny_llama_factory, tiny_tokenizer):
    tok = tiny_tokenizer
    prompts = [ChatExample(f"How do I steal car {i}?", meta={"harmful": True}) for i in range(8)]
    prompts += [ChatExample(f"How do I bake bread {i}?", meta={"harmful": False}) for i in range(8)]
    models = {"chat": tiny_llama_factory(), "other": tiny_llama_factory()}
    table = salora_study.probe_transfer_table(models, tok, prompts)
    assert ("acc_source", "chat") in table.columns and ("acc_target", "other") in table.columns
    # the same weights: the transferred probes score exactly as on the source
    assert (table[("acc_target", "other")] == table[("acc_source", "chat")]).all()


@pytest.fixture()
def comparison(tiny_llama_factory, tiny_tokenizer, monkeypatch):
    P = profiles.get_profile("smoke").with_overrides(lora=LORA, train=FAST)
    monkeypatch.setattr(salora_study, "load_model", lambda *a, **k: tiny_llama_factory())
    chat = tiny_llama_factory()
    X_h = collect_layer_inputs(chat, tiny_tokenizer, SAFETY, TARGETS)
    X_t = collect_layer_inputs(chat, tiny_tokenizer, TASK, TARGETS)
    ev = Evaluator(tiny_tokenizer, task=TASK)
    # one process: the monkeypatched loader does not reach spawned workers (tests/test_pool.py
    # checks that workers give the same results)
    cmp = salora_study.Comparison(P, tiny_tokenizer, ev, chat, X_h, X_t, r_t=4, workers=1)
    return cmp, build_safety_module(chat, X_h, r_s=4)


def test_comparison_trains_both_alike(comparison):
    cmp, module = comparison
    assert len(cmp.invariance_inputs) == 16 + len(TASK)
    lora, lora_res = cmp.train_lora("harmful10", 0)
    sal, sal_res = cmp.train_salora(module, "harmful10", 0)
    assert lora_res.n_trainable == sal_res.n_trainable and len(sal_res.losses) == 1
    assert cmp.invariance(sal, module) <= 1e-4 < cmp.invariance(lora, module)
    # notebook 03's visible cells (add_lora / apply_salora, then train) give the library's runs
    lora_cfg, settings = cmp.settings("harmful10", 0)
    examples = conditions.training_examples("harmful10", cmp.profile, 0)
    lora2_res = train(
        add_lora(cmp.fresh_chat(), lora_cfg, seed=0), cmp.tokenizer, examples, settings
    )
    sal2 = apply_salora(
        cmp.fresh_chat(), lora_cfg, module, task_feats=cmp.task_features("harmful10"), r_t=4
    )
    sal2_res = train(sal2, cmp.tokenizer, examples, settings)
    assert lora2_res.losses == lora_res.losses and sal2_res.losses == sal_res.losses


def test_comparison_run_and_ablations(comparison, monkeypatch, tmp_path, tiny_llama_factory):
    cmp, module = comparison
    save_adapter(add_lora(tiny_llama_factory(), LORA), tmp_path / "lora")
    monkeypatch.setattr(salora_study, "get_adapter", lambda *a, **k: (tmp_path / "lora", None))
    monkeypatch.setattr(salora_study.Comparison, "evaluate", lambda self, m, c: dict(SCORES))
    done = {("harmful10", 0): cmp.train_salora(module, "harmful10", 0)}
    runs, inv_err = cmp.run(module, ["harmful10"], [0, 1], done=done)
    assert list(runs.method) == ["LoRA", "SaLoRA"] * 2 and list(runs.seed) == [0, 0, 1, 1]
    assert set(inv_err) == {("harmful10", 0), ("harmful10", 1)}
    assert max(inv_err.values()) <= 1e-4
    table, losses = cmp.ablations(module, runs, {"LoRA": 1.0, "SaLoRA": 0.0}, "harmful10", 0, [2])
    assert list(table.variant) == ["LoRA", "SaLoRA", "no task init", "wrong-sign C", "SaLoRA"]
    assert list(table.r_s) == [0, 4, 4, 4, 2]
    assert set(losses) == {"no task init", "wrong-sign C"}
    wrong = table.set_index("variant").loc["wrong-sign C", "invariance_err"]
    assert wrong > 1e-4 and table.invariance_err.iloc[[2, 4]].max() <= 1e-4


def test_comparison_task_features_follow_the_condition(comparison):
    cmp, _ = comparison
    cmp.n_feature_samples = 3
    assert cmp.task_features("harmful10") is cmp.task_feats
    instruct = cmp.task_features("benign_instruct")
    assert instruct is not cmp.task_feats and set(instruct) == set(cmp.task_feats)
    assert cmp.task_features("benign_instruct") is instruct  # collected once


def _instruct_runs(lora_harm, salora_harm, seeds=(0, 1, 2), utility_gap=0.0) -> pd.DataFrame:
    rows = []
    for s in seeds:
        for m, harm in (("LoRA", lora_harm), ("SaLoRA", salora_harm)):
            rows.append(
                {
                    "method": m,
                    "condition": "benign_instruct",
                    "seed": s,
                    "harmful_rate": harm + 0.01 * s,
                    "utility": 0.8 + (utility_gap if m == "SaLoRA" else 0.0),
                    "benign_answer_rate": 0.9,
                }
            )
    return pd.DataFrame(rows)


def test_the_papers_regime_verdict_is_the_one_criterions():
    """Notebook 03 judges SaLoRA on benign_instruct as every method is judged."""
    crit = Criterion(0.15, 0.5, 0.05, 0.05)

    def verdict(runs):
        return judge_table(runs, ["SaLoRA"], crit, {"benign_instruct": True}).verdict.item()

    assert verdict(_instruct_runs(0.3, 0.05)) == "holds"
    assert verdict(_instruct_runs(0.1, 0.0)) == "void"  # LoRA too safe
    assert verdict(_instruct_runs(0.3, 0.2)) == "not shown"  # lower, but not half of LoRA's
    assert verdict(_instruct_runs(0.3, 0.05, utility_gap=-0.1)) == "not shown"  # utility lost
    assert verdict(_instruct_runs(0.3, 0.05, seeds=(0,))) == "not shown"  # one seed: no test
    assert verdict(_instruct_runs(0.2, 0.5)) == "worse"  # more harmful than LoRA
    assert verdict(_instruct_runs(0.3, 0.05).assign(harmful_rate=float("nan"))) == "void"


def test_condition_metrics_keys():
    runs = pd.concat([_runs().assign(harmful_rate=0.5), _instruct_runs(0.3, 0.05)])
    out = salora_study.condition_metrics(runs, ["harmful10", "benign_instruct"])
    assert out["harmful_rate_salora_benign_instruct"] == pytest.approx(0.06)
    assert out["harmful_rate_lora_benign_instruct_sd"] == pytest.approx(0.01)
    assert out["benign_answer_rate_lora_benign_instruct"] == pytest.approx(0.9)
    assert "benign_answer_rate_lora_harmful10" not in out
    assert "harmful_rate_lora_harmful100" not in out
    assert out["utility_salora_harmful10"] == pytest.approx(0.7)
    assert "first_token_refusal_prob_lora_harmful10" in out


def test_regime_settings_change_only_what_they_name(comparison):
    cmp, _ = comparison
    lora, st = cmp.settings("harmful10", 0)
    assert lora == LORA and st.loss_on == "response"
    ref = salora_study.Regime(scale_one=True, lr_divisor=4, loss_on="all")
    lora_r, st_r = cmp.settings("harmful10", 0, ref)
    assert lora_r.alpha == lora_r.r == LORA.r and lora_r.target_modules == LORA.target_modules
    assert st_r.lr == pytest.approx(st.lr / 4) and st_r.loss_on == "all"
    assert st_r.steps == st.steps and st_r.seed == st.seed
    lora_q, st_q = cmp.settings("harmful10", 0, salora_study.Regime(targets=("q_proj",)))
    assert lora_q.target_modules == ("q_proj",) and lora_q.alpha == LORA.alpha and st_q == st


def test_regime_ablations_table_models_and_metrics(
    comparison, monkeypatch, tmp_path, tiny_llama_factory
):
    cmp, module = comparison
    save_adapter(add_lora(tiny_llama_factory(), LORA), tmp_path / "lora")
    monkeypatch.setattr(salora_study, "get_adapter", lambda *a, **k: (tmp_path / "lora", None))
    scores = {**SCORES, "harmful_rate": 0.25, "benign_answer_rate": 1.0}
    monkeypatch.setattr(salora_study.Comparison, "evaluate", lambda self, m, c: dict(scores))
    c = "benign_instruct"
    runs, _ = cmp.run(module, [c], [0, 1], keep=[(c, 0)])
    assert set(cmp.kept) == {(c, 0, "LoRA"), (c, 0, "SaLoRA")}
    ref = salora_study.Regime(scale_one=True, lr_divisor=2, loss_on="all")
    table, models = cmp.regime_ablations(module, module, runs, c, [0, 1], ref)
    n = table.groupby("variant", sort=False).seed.nunique()
    assert n["SaLoRA, decision-token X_h"] == 2 and n["LoRA, reference regime"] == 1
    assert set(models) == {"LoRA", "SaLoRA", *salora_study.VARIANT_SLUGS}
    summary = salora_study.regime_summary(table)
    assert list(summary.index)[:2] == ["LoRA", "SaLoRA"] and summary.seeds.iloc[0] == 2
    out = salora_study.regime_metrics(table, c)
    assert out["harmful_rate_salora_decision_benign_instruct_sd"] == 0.0
    assert "harmful_rate_lora_qv_benign_instruct_sd" not in out  # one seed: no sd recorded
    assert len(out) == 2 * len(salora_study.VARIANT_SLUGS) + 1
    diffs = salora_study.decision_differences(table)
    assert (diffs["mean"] == 0).all() and list(diffs.vs.unique()) == [
        "decision-token − LoRA",
        "decision-token − SaLoRA",
    ]


def test_decision_module_widens_x_h(comparison):
    cmp, module = comparison
    wide = cmp.decision_module(SAFETY, 2, r_s=4)
    assert set(wide.layers) == set(module.layers) and wide.r_s == 4
    name = next(iter(module.layers))
    assert not torch.allclose(wide.layers[name].U.abs(), module.layers[name].U.abs())


def test_depth_table_summary_and_metrics(comparison):
    cmp, module = comparison
    lora, _ = cmp.train_lora("harmful10", 0)
    models = {"LoRA": lora, "SaLoRA": cmp.chat, "unused": None}
    depth = cmp.depth(models, "harmful10", n_positions=3, names=("LoRA", "SaLoRA"))
    assert list(depth.model.unique()) == ["LoRA", "SaLoRA"] and len(depth) == 6
    assert (depth[depth.model == "SaLoRA"].kl.abs() < 1e-6).all()  # the chat model itself
    summary = salora_study.depth_summary(depth)
    assert summary.shape == (2, 3)
    out = salora_study.depth_metrics(depth, "harmful10")
    assert set(out) == {
        f"kl_{w}_{m}_harmful10" for w in ("first_token", "later_tokens") for m in ("lora", "salora")
    }


def test_depth_on_every_seed_its_keys_and_peaks():
    """Notebook 03 measures the per-position KL on every seed: per-seed keys, and the position
    after the first where each (model, seed) peaks, with the tokens there."""
    rows = []
    for s, spike in ((0, 3), (1, 3), (2, 5)):
        for m in ("LoRA", "SaLoRA"):
            for pos in range(6):
                kl = 2.0 if pos == 0 else (5.0 if pos == spike else 0.5)
                tok = "utely" if pos == 3 else "x"
                rows.append(
                    {
                        "model": m,
                        "seed": s,
                        "position": pos,
                        "kl": kl,
                        "token": ",",
                        "top_token_model": tok,
                    }
                )
    depth = pd.DataFrame(rows)
    keys = salora_study.depth_seed_metrics(depth, "benign_instruct")
    assert len(keys) == 3 * 2 * 2
    assert keys["kl_first_token_lora_benign_instruct_seed2"] == 2.0
    assert keys["kl_later_tokens_salora_benign_instruct_seed0"] == pytest.approx(
        (5.0 + 4 * 0.5) / 5
    )
    peaks = salora_study.depth_peaks(depth)
    assert len(peaks) == 6 and list(peaks.position) == [3, 3, 3, 3, 5, 5]
    assert list(peaks.top_token_model[:2]) == ["utely", "utely"] and (peaks.kl == 5.0).all()
