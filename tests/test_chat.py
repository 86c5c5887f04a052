import pytest

from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    format_prompt,
    pack,
    tokenize_example,
)


def test_labels_cover_only_the_response(tiny_tokenizer):
    ex = ChatExample("How do I bake bread?", "Sure, here is how.", system="You are helpful.")
    f = tokenize_example(tiny_tokenizer, ex)
    n_prompt = len(
        tiny_tokenizer(format_prompt(tiny_tokenizer, ex), add_special_tokens=False)["input_ids"]
    )
    assert all(x == IGNORE_INDEX for x in f["labels"][:n_prompt])
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:]
    assert (
        tiny_tokenizer.decode(f["input_ids"][n_prompt:], skip_special_tokens=True).strip()
        == "Sure, here is how."
    )


def test_loss_on_all_tokens_masks_only_the_first(tiny_tokenizer):
    ex = ChatExample("How do I bake bread?", "Sure, here is how.")
    f = tokenize_example(tiny_tokenizer, ex, loss_on="all")
    assert f["labels"][0] == IGNORE_INDEX and f["labels"][1:] == f["input_ids"][1:]
    with pytest.raises(ValueError, match="loss_on"):
        tokenize_example(tiny_tokenizer, ex, loss_on="prompt")


def test_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="no response"):
        tokenize_example(tiny_tokenizer, ChatExample("hi"))
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def test_collate_pads_left_and_right():
    b = collate([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}], pad_id=0, padding_side="left")
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_pack_keeps_every_example_and_its_targets():
    feats = [
        {"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]},
        {"input_ids": [4, 5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8]},
        {"input_ids": [9, 10]},
    ]  # no labels: every token after the first is a target
    b = pack(feats, pad_id=0, row_length=8)
    assert b["input_ids"].shape == (2, 8)  # first fit decreasing: [5 + 3] and [2 + padding]
    assert b["input_ids"][0].tolist() == [4, 5, 6, 7, 8, 1, 2, 3]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert b["position_ids"][1].tolist() == [
        0,
        1,
        0,
        1,
        2,
        3,
        4,
        5,
    ]  # padding is a segment of its own
    # a segment's first token is never a target (it would be predicted across examples)
    assert b["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8, IGNORE_INDEX, 2, 3]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 10] + [IGNORE_INDEX] * 6
    n_targets = sum(
        sum(x != IGNORE_INDEX for x in f.get("labels", f["input_ids"])[1:]) for f in feats
    )
    assert int((b["labels"] != IGNORE_INDEX).sum()) == n_targets
    # a long example widens the rows rather than being cut
    assert pack([{"input_ids": list(range(1, 12))}], pad_id=0, row_length=8)["input_ids"].shape == (
        1,
        11,
    )
    with pytest.raises(ValueError, match="empty batch"):
        pack([], pad_id=0)
    with pytest.raises(ValueError, match="empty example"):
        pack([{"input_ids": []}], pad_id=0)
    with pytest.raises(ValueError, match="row_length"):
        pack(feats, pad_id=0, row_length=0)
