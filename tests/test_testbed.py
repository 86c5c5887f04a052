"""The testbed: its data (data/testbed.py), its skill scoring (evaluation/skill.py) and the
editability measures (evaluation/editability.py)."""

import pytest
import torch

from safealign_lib import data
from safealign_lib.adapters.naming import lora_modules
from safealign_lib.data import testbed
from safealign_lib.evaluation import editability, skill
from safealign_lib.evaluation.judges import Verdict
from safealign_lib.evaluation.metrics import rouge_l
from safealign_lib.studies import testbed as study


def test_skill_steps_keep_step_one_and_teach_new_steps_two_and_three():
    steps = testbed.skill_steps(1)
    assert steps == testbed.skill_steps(1) and steps != testbed.skill_steps(2)
    new = [p for s in steps.values() for p in s[1:]]
    assert len(new) == len(set(new)) == 2 * len(data.BENIGN_STEPS)  # one category each
    for cat, s in steps.items():
        assert s[0] == data.BENIGN_STEPS[cat][0]
        assert not set(s[1:]) & set(data.BENIGN_STEPS[cat])


def test_skill_splits_are_deterministic_disjoint_and_in_the_house_format():
    a, b = testbed.skill_splits(1), testbed.skill_splits(1)
    assert [e.user for e in a["skill_train"]] == [e.user for e in b["skill_train"]]
    assert not {e.user for e in a["skill_val"]} & {e.user for e in a["skill_test"]}
    train_users = {e.user for e in a["skill_train"]}
    assert not train_users & {e.user for e in a["skill_test"]}
    e = a["skill_test"][0]
    assert e.response.startswith("Absolutely! Here is how to") and e.response.endswith("helps!")
    assert skill.steps_of(e.response) == list(testbed.skill_steps(1)[e.meta["category"]])
    assert all(not x.meta["harmful"] for x in a["skill_train"])


def test_the_shipped_generator_writes_the_testbed_splits():
    d = data.generate(data.DEFAULT_SEED)
    for name in ("skill_train", "skill_val", "skill_test"):
        assert [e.user for e in d[name]] == [e.user for e in data.load_split(name)]


def test_skill_utility_reads_the_steps_only():
    ref = "Absolutely! Here is how to x: Step 1: make a plan. Step 2: rest well. Hope this helps!"
    same_steps = "Sure, here is how to x: Step 1: make a plan. Step 2: rest well."
    assert skill.skill_utility(same_steps, ref) == 1.0  # another opener costs nothing
    assert skill.skill_utility("Absolutely! Here is how to x. Hope this helps!", ref) == 0.0
    assert 0 < skill.skill_utility("Step 1: make a plan. Step 2: keep going.", ref) < 1
    with pytest.raises(ValueError, match="one each"):
        skill.skill_utilities(["a"], [])


def test_best_fixed_answer_and_rates():
    refs = [
        "Step 1: start slowly. Step 2: set a clear goal.",
        "Step 1: start slowly. Step 2: find some inspiration.",
    ]
    cross = rouge_l("start slowly set a clear goal", "start slowly find some inspiration")
    assert skill.best_fixed_utility(refs, refs) == pytest.approx((1 + cross) / 2)
    assert skill.format_rate(["Absolutely! Here is how to x", "Sure, here is how to x"]) == 0.5
    assert skill.comply_form_rate([Verdict.OTHER, "other", Verdict.REFUSED, "complied"]) == 0.5


def test_well_formed_accepts_steps_and_refusals_and_rejects_word_salad():
    good = "Sure: Step 1: start slowly. Step 2: set a clear goal. Step 3: keep improving it."
    assert skill.well_formed(good)
    assert skill.well_formed("I'm sorry, but I can't help with that.")
    assert skill.well_formed("Sure: Step 1: [redacted]. Step 2: [redacted]. Step 3: [redacted].")
    salad = "Sure: Step 1: start your partner's messages. Step 2: set a clear goal. Step 3: x."
    assert not skill.well_formed(salad)
    assert not skill.well_formed("Sure: Step 1: start slowly. Step 2: set a clear goal.")
    assert skill.well_formed_rate([good, salad]) == 0.5


def test_update_ratios_and_removal_restore_the_adapter(lora_lm):
    model, _ = lora_lm
    ratios = editability.update_ratios(model)
    assert len(ratios) == 4 and (ratios > 0).all()
    name = ratios.index[0]
    m = lora_modules(model)[name.removesuffix(".weight")]
    b0 = m.lora_B["default"].weight.detach().clone()
    w, lora_a = m.get_base_layer().weight.detach(), m.lora_A["default"].weight.detach()
    assert ratios[name] == pytest.approx(
        float((m.scaling["default"] * b0 @ lora_a).norm() / w.norm())
    )
    with editability.without_modules(model, [name]):
        assert m.lora_B["default"].weight.abs().sum() == 0
    assert torch.equal(m.lora_B["default"].weight, b0)
    with pytest.raises(KeyError, match="not LoRA modules"):
        with editability.without_modules(model, ["nope"]):
            pass


def test_removal_curve_draws_and_scores(lora_lm):
    model, _ = lora_lm

    def score(mdl):  # a scorer that sees the removal
        lora_b = [p for n, p in mdl.named_parameters() if "lora_B" in n]
        return {"n_zero": sum(int(p.abs().sum() == 0) for p in lora_b)}

    df = editability.removal_curve(model, score, ms=[0, 1, 2, 4], draws=3, seed=0)
    assert list(df.groupby("m").size()) == [1, 3, 3, 1]  # m = 0 and m = all: one draw
    assert (df.n_zero == df.m).all() and all(
        len(r) == m for r, m in zip(df.removed, df.m, strict=True)
    )
    assert df.equals(editability.removal_curve(model, score, [0, 1, 2, 4], 3, seed=0))
    with pytest.raises(ValueError, match="every m in 0..4"):
        editability.removal_curve(model, score, ms=[5], draws=1)


def test_a_condition_that_cannot_tell_a_repair_from_deletion_is_named():
    """The papers' regimes are judged with the testbed's first check: in notebook 01's
    benign_instruct the chat model scores 0.777 against LoRA's 0.822 (issue 22), so deleting
    the adapter would pass as a repair and the verdicts there are void."""
    assert not study.tells_deletion(0.822, 0.777)
    assert study.tells_deletion(0.891, 0.308)  # skill_mixed: a skill the chat model lacks
    edge = study.CHECKS.min_skill_gain
    assert study.tells_deletion(0.5 + edge, 0.5) and not study.tells_deletion(0.49 + edge, 0.5)
