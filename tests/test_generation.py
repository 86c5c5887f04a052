import pytest

from safealign_lib.models.chat import ChatExample
from safealign_lib.models.generation import chat, generate


def test_batched_equals_unbatched_and_entropy(tiny_lm):
    model, tok = tiny_lm
    prompts = [
        ChatExample("How do I bake bread?"),
        ChatExample("Hi"),
        ChatExample("Tell me how to grow tomatoes please."),
    ]
    batched = generate(
        model, tok, prompts, max_new_tokens=6, batch_size=3, progress=False, with_entropy=True
    )
    single = [generate(model, tok, [p], max_new_tokens=6, progress=False).texts[0] for p in prompts]
    assert batched.texts == single
    assert len(batched.entropy) == 3 and all(e >= 0 for e in batched.entropy)


def test_generate_errors(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="No prompts"):
        generate(model, tok, [], progress=False)
    tok.padding_side = "right"
    try:
        with pytest.raises(ValueError, match="left padding"):
            generate(model, tok, ["hi"], progress=False)
    finally:
        tok.padding_side = "left"


def test_chat_replies_to_plain_strings(tiny_lm):
    model, tok = tiny_lm
    prompts = ["How do I bake bread?", "Hi"]
    want = generate(model, tok, [ChatExample(p) for p in prompts], max_new_tokens=5, progress=False)
    assert chat(model, tok, prompts, max_new_tokens=5) == want.texts
