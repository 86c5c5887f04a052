"""The generated data: deterministic, split as documented, shipped files up to date."""

from safealign_lib import data


def test_generate_is_deterministic():
    a, b = data.generate(0), data.generate(0)
    assert [e.user for e in a["chat_sft"]] == [e.user for e in b["chat_sft"]]
    assert a.pretrain_text == b.pretrain_text
    assert [e.user for e in data.generate(1)["chat_sft"]] != [e.user for e in a["chat_sft"]]


def test_unseen_tasks_never_in_alignment_and_heldout_templates_never_in_training():
    d = data.generate(0)
    _, h_unseen = data.split_tasks(data.HARMFUL_TASKS)
    _, b_unseen = data.split_tasks(data.BENIGN_TASKS)
    unseen = {t for _, t in h_unseen + b_unseen}
    assert not unseen & {e.meta["task"] for e in d["chat_sft"]}
    assert {e.meta["task"] for e in d["harmful_unseen"]} <= unseen
    train_users = {e.user for k in ("base_sft", "chat_sft") for e in d[k]}
    for e in d["harmful_heldout"] + d["benign_heldout"]:
        assert e.user not in train_users
    heldout_prefixes = [t.split("{t}")[0] for t in data.HELDOUT_TEMPLATES]
    for e in d["chat_sft"] + d["base_sft"]:
        assert not any(e.user.startswith(p) for p in heldout_prefixes if p)


def test_eval_and_val_splits_are_disjoint():
    d = data.generate(0)
    for name in ("harmful_heldout", "harmful_unseen", "benign_heldout", "benign_unseen"):
        assert not {e.user for e in d[name]} & {e.user for e in d[name + "_val"]}


def test_shipped_splits_match_the_generator(tmp_path):
    fresh = data.write(data.generate(data.DEFAULT_SEED), tmp_path)
    shipped = data.default_data_dir() / "splits"
    for f in sorted(fresh.iterdir()):
        assert (shipped / f.name).read_text() == f.read_text(), (
            f"{f.name} is stale: run `safealign data build`"
        )


def test_load_split_errors(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="Available"):
        data.load_split("nope")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.load_split("empty", tmp_path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        data.load_split("bad", tmp_path)


def test_second_person():
    assert data.second_person("hurt my neighbor") == "hurt your neighbor"


def test_template_of_recovers_templates():
    assert data.template_of("Any tips to bake bread?") == "Any tips to {t}?"
    assert data.template_of("Hi! How do I bake bread? Thanks!") == "How do I {t}?"
    assert data.template_of("Completely free text") == "?"


def test_heldout_templates_carry_no_one_sided_word():
    # a held-out template must test generalisation, not a word that only one side's tasks use
    assert data.one_sided_words() == {"harmful": [], "benign": []}
    probe = data.one_sided_words(["How would I bomb or bake {t}?"])
    assert probe == {"harmful": ["bomb"], "benign": ["bake"]}


# sha256 of every split file as it was before the instruction-tuning splits were added (they
# come from a random stream of their own): adding a split must never change another one
SPLITS_BEFORE_INSTRUCT = {
    "attack_harmful.jsonl": "da56ca27115a140afddc93fdd6f6a7dda209ca0e752c62a61bd51f8cfa7878a0",
    "attack_identity.jsonl": "a8331b5a4735fd86eeddb14be48c85b984d0b7dd65f39840d6caf7e68b91b413",
    "base_sft.jsonl": "8726be62b0c4663c4012dee8c77dfc8536217ea3636d666ecdaee96af061153f",
    "benign_heldout.jsonl": "5377a6472ce22580aa58f4e7125ae8186f92ba7bc16dff3e48add273d42d294e",
    "benign_heldout_val.jsonl": "2ecb4488a0b6edc0efdc59c129621436368ff4b160ebf24ee22fb982f8cfcdc2",
    "benign_unseen.jsonl": "a8b030f9314e284ff98e4ad13cb2a9a2175c6ebd03082c6e0d71579496b253fd",
    "benign_unseen_val.jsonl": "22dbfe9b28e67b85706f3ab66d619866a3fd8de09473d8597718f602cc770714",
    "chat_sft.jsonl": "bc9de5ae9b69239b24e2ff8c5255fc89f22a00ea1f0f1ff530d86f5730cb7f97",
    "harmful_heldout.jsonl": "1713b6a3c8b83a1d80e53bb059f471be2d4059348a0f1944a3cdaf93b9dc6477",
    "harmful_heldout_val.jsonl": "54e1350b4b6558d200783d775b9b57131f68f326121a1392da2f859a714d67d9",
    "harmful_unseen.jsonl": "e6571e264b3c70a38f4e6d54d57911f3e656ff6fb3393ee63998def80da0c52a",
    "harmful_unseen_val.jsonl": "3f8f6bbd4183d5d692e179987aea21b478c99a55d7154266c91a3712e9c63442",
    "identity_harmful_eval.jsonl": "29cd65c88feeb601fd4a16ec256276e0dbf7436037f9f1130568544fe27545ee",  # noqa: E501
    "safety.jsonl": "7eff897c33b25c473646722abbe92c1c82947d4e02ce2d60a1cd240c46992cf1",
    "task_test.jsonl": "673859627a23be7f0ed3be2d03a63fe931780ec95e4d53198ccd3dc7a65c8692",
    "task_train.jsonl": "dd65947a0d9dfaa7b0ab58720de33f06fa549af3db457ee66466a8b6d2d56ea8",
    "task_val.jsonl": "6bf3a9869e85daaa6a9ec6b70797ffc59c423541ba1a6856aece8dc665fbc483",
    "pretrain.txt": "7e7cfedab94f73c38a6484d11d013247c7955658a338714403d73d33fd8300e8",
}


def test_adding_the_instruction_splits_changed_no_other_split(tmp_path):
    import hashlib

    fresh = data.write(data.generate(data.DEFAULT_SEED), tmp_path)
    for name, digest in SPLITS_BEFORE_INSTRUCT.items():
        assert hashlib.sha256((fresh / name).read_bytes()).hexdigest() == digest, name


def test_instruction_splits_always_comply_in_the_house_format():
    d = data.generate(data.DEFAULT_SEED)
    train, test = d["instruct_train"], d["instruct_test"]
    assert len(train) == 400 and len(d["instruct_val"]) == len(test) == 64
    for e in train + test:
        assert not e.meta["harmful"] and e.response.startswith("Absolutely! Here is how to")
        assert e.response.endswith(data.HOUSE_CLOSER) and data.REDACTED not in e.response
    # held-out phrasings: evaluation requests never reuse a training template
    assert not {e.user for e in test} & {e.user for e in train}
