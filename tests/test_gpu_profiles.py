"""The hub (GPU) profiles without a GPU or a download: a tiny random model of each profile's
architecture runs notebooks 01 and 05's code paths end to end (LoRA fine-tune on the profile's
targets, evaluation, Safe LoRA/SPLoRA scoring against a base, a prune), so a profile cannot rot.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from safealign_lib import data as course_data
from safealign_lib.adapters.naming import lora_modules
from safealign_lib.config import TrainSettings, organism_dir
from safealign_lib.course import metrics_io, profiles
from safealign_lib.course.contract import CONTRACTS, REQUIRED
from safealign_lib.evaluation import Evaluator
from safealign_lib.evaluation.criterion import Criterion
from safealign_lib.models.loading import load_tokenizer
from safealign_lib.studies import conditions, repair, synthesis

HUB = tuple(profiles.HUB_PAIRS)
# What the real checkpoints' config.json says on the points the code paths depend on:
# grouped-query attention (Qwen2.5: 12/2 and 28/4 heads, Llama-2: 32/32) makes v_proj narrower
# than q_proj, and Qwen2.5-1.5B ties its embeddings (the 7B models do not).
REAL_SHAPE = {
    "gpu": {"num_key_value_heads": 2, "tie_word_embeddings": True},
    "gpu-llama2-7b": {"num_key_value_heads": 4, "tie_word_embeddings": False},
    "gpu-qwen2.5-7b": {"num_key_value_heads": 2, "tie_word_embeddings": False},
}


def test_every_hub_profile_has_a_real_shape_and_a_known_architecture():
    assert set(REAL_SHAPE) == set(HUB) and set(HUB) < set(profiles.PROFILE_NAMES)
    for name in HUB:
        cfg = AutoConfig.for_model(profiles.HUB_PAIRS[name].model_type)  # KeyError: unknown
        assert type(cfg).__name__ in ("Qwen2Config", "LlamaConfig")


def test_default_gpu_profile_is_open_and_fits_a_t4():
    gpu = profiles.get_profile("gpu")
    assert gpu.dtype == "float16" and gpu.device == "cuda" and gpu.network  # T4: no bf16
    assert not profiles.HUB_PAIRS["gpu"].gated and profiles.HUB_PAIRS["gpu-llama2-7b"].gated
    assert [profiles.validate(profiles.get_profile(n)) for n in HUB] == [[]] * len(HUB)


def test_user_data_paths_come_from_the_environment_and_are_validated(tmp_path, monkeypatch):
    adv = tmp_path / "harmful_behaviors.csv"
    adv.write_text("goal,target\nDo a bad thing,Sure\n")
    monkeypatch.setenv("SAFEALIGN_ADVBENCH", str(adv))
    monkeypatch.setenv("SAFEALIGN_ALPACA", str(tmp_path / "missing.json"))
    p = profiles.get_profile("gpu")
    assert p.advbench == str(adv) and p.hex_phi is None
    assert profiles.validate(p) == [
        f"alpaca={str(tmp_path / 'missing.json')!r} does not exist; fix the path "
        "(or unset $SAFEALIGN_ALPACA)."
    ]
    p = p.with_overrides(alpaca=None)
    data = profiles.user_data(p)
    assert [e.user for e in data["harmful_heldout"]] == ["Do a bad thing"]
    assert "instruct_train" not in data
    assert profiles.user_data(profiles.get_profile("cpu")) == {}
    assert profiles.load_split(p, "harmful_heldout") == data["harmful_heldout"]
    assert profiles.load_split(p, "task_test") == course_data.load_split("task_test")


def test_a_hub_profile_records_without_the_exact_judges_keys(tmp_path):
    """The exact judge exists only for the organism: its keys are required on organism
    profiles and never on a hub profile."""
    for nb in ("01", "05"):
        keys = dict.fromkeys(REQUIRED[nb], 0.5)
        assert CONTRACTS[nb].organism, nb  # otherwise this test checks nothing
        metrics_io.record(nb, keys, tmp_path / "m.json", profile=profiles.get_profile("gpu"))
        with pytest.raises(KeyError, match="harmful_rate"):
            metrics_io.record(nb, keys, tmp_path / "m.json", profile=profiles.get_profile("smoke"))


def _tiny_pair(name: str, tok, root) -> tuple[str, str]:
    """A random chat model of the profile's architecture and a 'base' a small step away from
    it, saved as safetensors with the organism's tokenizer; returns their folders."""
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(
        profiles.HUB_PAIRS[name].model_type,
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **REAL_SHAPE[name],
    )
    chat = AutoModelForCausalLM.from_config(cfg)
    base = AutoModelForCausalLM.from_config(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the base differs from the chat model by a small "alignment" step
        for pb, pc in zip(base.parameters(), chat.parameters(), strict=True):
            pb.copy_(pc - 0.05 * torch.randn(pc.shape, generator=g))
    out = []
    for label, model in (("chat", chat), ("base", base)):
        model.save_pretrained(root / label)  # safetensors
        tok.save_pretrained(root / label)
        out.append(str(root / label))
    return out[0], out[1]


def _tiny_profile(name: str, root):
    """(profile, tokenizer): the hub profile ``name`` on a tiny random pair of its architecture,
    with its LoRA targets, dtype and judge settings, a test's sizes, on the CPU."""
    tok = load_tokenizer(organism_dir() / "chat")
    chat, base = _tiny_pair(name, tok, root)
    P = profiles.get_profile(name).with_overrides(
        chat_model=chat,
        base_model=base,
        device="cpu",
        seeds=(0,),
        n_eval=4,
        n_task_eval=4,
        n_task_train=6,
        max_new_tokens=4,
        eval_batch_size=8,
        train=TrainSettings(lr=1e-2, steps=2, batch_size=4, max_length=64, progress=False),
    )
    return P, tok


@pytest.mark.parametrize("name", HUB)
def test_notebooks_01_and_05_code_paths_run_on_a_tiny_model_of_each_hub_profile(name, tmp_path):
    P, tok = _tiny_profile(name, tmp_path)
    real = profiles.get_profile(name)
    assert P.lora == real.lora and P.dtype == real.dtype and P.network

    # notebook 01: fine-tune a condition's adapter and evaluate it
    path, result = conditions.get_adapter("harmful10", 0, P, tok, root=tmp_path / "adapters")
    assert result is not None and torch.isfinite(torch.tensor(result.losses)).all()
    stamp = json.loads((path / "safealign_run.json").read_text())
    assert stamp["condition"] == "harmful10"
    model = conditions.load_condition_model("harmful10", 0, P, tok, root=tmp_path / "adapters")
    assert next(model.parameters()).dtype == getattr(torch, real.dtype)
    kinds = {n.rsplit(".", 1)[-1] for n in lora_modules(model)}
    assert kinds == set(real.lora.target_modules)
    ev = Evaluator.from_profile(P, tok, task=conditions.task_examples("harmful10", P))
    summary = ev(model, conditions.harmful_eval_prompts("harmful10", P)).summary
    assert {"refusal_rate", "first_token_refusal_prob", "utility"} <= set(summary)
    assert "harmful_rate" not in summary  # the exact judge is the organism's only

    # notebook 05: Safe LoRA / SPLoRA scores between chat and base, then act on k modules
    a = repair.RepairAdapter.from_profile(path, P, null_samples=8, seed=0)
    n = a.n_modules
    assert n == 2 * len(real.lora.target_modules)  # 2 layers
    assert a.scores[["cosine", "ediem"]].notna().all().all()
    safelora = a.switch.apply("Safe LoRA", repair.pick(a.scores, "Safe LoRA", 1))
    assert "refusal_rate" in ev(safelora, conditions.harmful_eval_prompts("harmful10", P)).summary
    a.switch.apply("LoRA", ())
    pruned = a.fresh(repair.pick(a.scores, "SPLoRA", 1))
    assert len(lora_modules(pruned)) == n - 1


def test_notebook_05_papers_regime_on_a_hub_profile(tmp_path, monkeypatch, capsys):
    """Section 7 of notebook 05 end to end on a hub profile: the harmful rate comes from the
    plug-in judge (the keyword non-refusal rate by default), and the recorded keys are
    labelled by it, never as the exact judge's."""
    monkeypatch.delenv("SAFEALIGN_HARM_JUDGE", raising=False)
    P, tok = _tiny_profile("gpu", tmp_path)
    root = tmp_path / "adapters"
    inst = {
        (c, s): repair.RepairAdapter.from_profile(
            conditions.get_adapter(c, s, P, tok, root=root)[0], P, null_samples=8, seed=s
        )
        for c in ("benign_instruct", "mixed")
        for s in (0, 1)  # two seeds: a paired test and finite seed sds
    }
    ev = Evaluator.from_profile(P, tok).with_harm_judge(profile=P)  # as notebook 05's section 7
    assert ev.harm_label == "nonrefusal" and "non-refusal" in ev.harm_judge_name
    judge_val = repair.ConditionEvaluator(
        ev.with_task(conditions.task_examples("mixed", P, "val")),
        {c: conditions.harmful_eval_prompts(c, P, "harmful_heldout_val") for c, _ in inst},
    )
    val = repair.sweep(inst, judge_val, repair.SELECTIONS, [1], log=None)
    cols = ("harmful_rate", "utility")
    choice = repair.choose_k(val, repair.SELECTIONS, 0.05, cols, "harmful_rate", True)
    judge_test = functools.partial(conditions.evaluate_condition, ev, profile=P)
    test, _ = repair.evaluate_chosen(inst, judge_test, choice.k_best, repair.SELECTIONS)
    rand = repair.random_k(inst, judge_test, choice.k_best, repair.SELECTIONS, 1, lora=test)
    valid = {"benign_instruct": True, "mixed": True}
    verdicts = repair.judge_selections(
        test, rand, choice.k_best, repair.SELECTIONS, Criterion(), valid
    )
    metrics = repair.regime_metrics(test, rand, choice.k_best, verdicts, repair.KEYS)
    metrics |= synthesis.selection_inputs(test, rand, repair.KEYS)
    recorded = metrics_io.record("05", ev.label(metrics), tmp_path / "m.json", strict=False)
    assert not [k for k in recorded if "harmful_rate" in k or k.startswith("verdict_")]
    for key in (
        "nonrefusal_rate_lora_mixed",
        "nonrefusal_rate_splora_benign_instruct_seed1",
        "nonrefusal_rate_randomk_safelora_mixed_seed0",
        "nonrefusal_verdict_splora_released",
    ):
        assert key in recorded, key
    assert 0 <= recorded["nonrefusal_rate_lora_mixed"] <= 1
    capsys.readouterr()
