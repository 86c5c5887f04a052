import pytest

from safealign_lib.chat import IGNORE_INDEX, ChatExample, collate, format_prompt, tokenize_example


def test_labels_cover_only_the_response(tiny_tokenizer):
    ex = ChatExample("How do I bake bread?", "Sure, here is how.", system="You are helpful.")
    f = tokenize_example(tiny_tokenizer, ex)
    n_prompt = len(tiny_tokenizer(format_prompt(tiny_tokenizer, ex), add_special_tokens=False)["input_ids"])
    assert all(x == IGNORE_INDEX for x in f["labels"][:n_prompt])
    assert f["labels"][n_prompt:] == f["input_ids"][n_prompt:]
    assert tiny_tokenizer.decode(f["input_ids"][n_prompt:], skip_special_tokens=True).strip() == "Sure, here is how."


def test_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="no response"):
        tokenize_example(tiny_tokenizer, ChatExample("hi"))
    with pytest.raises(ValueError, match="empty batch"):
        collate([], 0)


def test_collate_pads_left_and_right():
    b = collate([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}], pad_id=0, padding_side="left")
    assert b["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
