"""Safety recovery examples (methods/deep_alignment.py): a compliant start that is input, a
refusal that is the target, and a realignment that is seeded."""

import random

import pytest

from safealign_lib import data, models
from safealign_lib.course.profiles import get_profile
from safealign_lib.methods import deep_alignment as da
from safealign_lib.models.chat import ChatExample


@pytest.fixture(scope="module")
def organism_tokenizer():
    return models.load_tokenizer(get_profile("smoke").chat_model)


def test_a_prefix_is_the_start_of_a_compliant_answer_and_never_its_content():
    rng = random.Random(0)
    for n in (1, 3, 50):
        p = da.compliant_prefix("pick a lock", n, rng)
        assert len(p.split()) <= n
        assert data.REDACTED not in p
    with pytest.raises(ValueError, match="at least one word"):
        da.compliant_prefix("pick a lock", 0, rng)


def test_recovery_examples_come_from_the_alignment_data_and_end_in_its_refusal():
    exs = da.recovery_examples(20, seed=3)
    safety = {(e.user, e.response) for e in data.load_split("safety")}
    evaluation = {e.user for e in data.load_split("harmful_heldout")}
    for e in exs:
        refusal = e.response[len(e.meta["prefix"]) + 1 :]
        assert e.response.startswith(e.meta["prefix"] + " ")
        assert (e.user, refusal) in safety
        assert e.user not in evaluation
    assert [e.response for e in da.recovery_examples(20, seed=3)] == [e.response for e in exs]
    assert len({len(e.meta["prefix"].split()) for e in exs}) > 3  # prefix lengths vary
    with pytest.raises(ValueError, match="n must be in"):
        da.recovery_examples(10**6)


def test_the_prefix_is_masked_and_the_refusal_is_the_target(organism_tokenizer):
    tok = organism_tokenizer
    for e in da.recovery_examples(10, seed=1):
        feats = da.tokenize_recovery(tok, e)
        target = tok.decode(
            [t for t, y in zip(feats["input_ids"], feats["labels"], strict=True) if y != -100]
        )
        refusal = e.response[len(e.meta["prefix"]) + 1 :]
        # the refusal is the target, the compliant start is not
        assert target.strip().startswith(refusal.split()[0]) and refusal.split()[-1] in target
    with pytest.raises(ValueError, match="Not a recovery example"):
        da.tokenize_recovery(tok, ChatExample("hi", "Sure."))


def test_realignment_is_seeded_and_saves_a_loadable_model(tmp_path, organism_tokenizer):
    P = get_profile("smoke")
    s = da.RealignSettings(n_recovery=16, steps=3, batch_size=8)
    a = da.realign(P.chat_model, tmp_path / "a", organism_tokenizer, s)
    b = da.realign(P.chat_model, tmp_path / "b", organism_tokenizer, s)
    assert a["final_loss"] == b["final_loss"]
    assert (tmp_path / "a" / "model.safetensors").is_file()
    assert not list((tmp_path / "a").glob("*.bin"))  # safetensors only
    models.load_model(tmp_path / "a")
    with pytest.raises(ValueError, match="room for helpful answers"):
        da.realign(
            P.chat_model,
            tmp_path / "c",
            organism_tokenizer,
            da.RealignSettings(recovery_share=0.6, harmful_share=0.5),
        )
