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
