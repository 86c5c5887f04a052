import pytest
import torch

from safealign_lib.models.chat import ChatExample, encode_prompts
from safealign_lib.models.generation import (
    _hf_generate,
    chat,
    generate,
    greedy_decode,
    plain_greedy,
)


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


def _prompts():
    texts = ["Hi", "How do I bake bread?", "Tell me how to grow tomatoes please.", "Summarize it."]
    return [ChatExample(t) for t in texts * 2]


@pytest.mark.parametrize("which", ["tiny_lm", "lora_lm"])
def test_greedy_decode_matches_model_generate_as_rows_finish(which, request):
    # an end token that some rows produce early and others never: rows leave the batch at
    # different steps, and every row must still get model.generate's tokens
    model, tok = request.getfixturevalue(which)
    enc = encode_prompts(tok, _prompts())
    ref, _ = _hf_generate(model, enc, 8, tok.eos_token_id, tok.pad_token_id, False)
    eos = int(ref[0, 2])
    assert 0 < int((ref == eos).any(1).sum()) < len(ref)
    want, want_h = _hf_generate(model, enc, 8, eos, tok.pad_token_id, True)
    got, got_h = greedy_decode(
        model, **enc, max_new_tokens=8, eos_id=eos, pad_id=tok.pad_token_id, with_entropy=True
    )
    assert torch.equal(got, want)
    ended = (got == eos).cumsum(1) - (got == eos).long() > 0  # after a row's end: not scored
    assert torch.allclose(got_h.masked_fill(ended, 0), want_h.masked_fill(ended, 0), atol=1e-5)


def test_a_generation_config_that_changes_logits_goes_through_model_generate(tiny_lm):
    model, tok = tiny_lm
    assert plain_greedy(model)
    model.generation_config.repetition_penalty = 5.0
    try:
        assert not plain_greedy(model)
        enc = encode_prompts(tok, _prompts())
        want, _ = _hf_generate(model, enc, 8, tok.eos_token_id, tok.pad_token_id, False)
        got = generate(model, tok, _prompts(), max_new_tokens=8, batch_size=8, progress=False)
        assert got.texts == [t.strip() for t in tok.batch_decode(want, skip_special_tokens=True)]
    finally:
        model.generation_config.repetition_penalty = 1.0
