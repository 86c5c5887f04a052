"""Per-position divergence over the first answer tokens (shallow alignment)."""

import numpy as np
import pytest
import torch

from safealign_lib.evaluation import answer_position_divergence
from safealign_lib.models.chat import ChatExample

EXAMPLES = [
    ChatExample("How do I bake bread?", response="Mix flour and water, then bake it."),
    ChatExample("Tell me a story.", response="Once upon a time."),
]


def test_a_model_against_itself_diverges_nowhere(tiny_lm):
    model, tok = tiny_lm
    d = answer_position_divergence(model, model, tok, EXAMPLES, n_positions=4)
    assert list(d.position) == [0, 1, 2, 3] and (d.n > 0).all()
    assert np.allclose(d.kl, 0, atol=1e-6)
    assert np.allclose(d.token_prob_reference, d.token_prob_model)
    assert ((d.token_prob_model > 0) & (d.token_prob_model < 1)).all()


def test_a_changed_model_diverges_and_short_answers_drop_out(tiny_llama_factory, tiny_tokenizer):
    ref, other = tiny_llama_factory(), tiny_llama_factory()
    with torch.no_grad():
        other.lm_head.weight.mul_(3.0)
    d = answer_position_divergence(ref, other, tiny_tokenizer, EXAMPLES, n_positions=60)
    assert (d.kl[d.n > 0] > 0).all()
    assert d.n.iloc[0] == 2 and d.n.iloc[-1] == 0  # no answer has 60 tokens
    assert (d.kl[d.n == 0] == 0).all()


def test_examples_need_responses(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="responses"):
        answer_position_divergence(model, model, tok, [ChatExample("hi")])
    with pytest.raises(ValueError, match="n_positions"):
        answer_position_divergence(model, model, tok, EXAMPLES, n_positions=0)


def test_the_tokens_at_each_position_are_named(tiny_lm):
    """``token``: the answers' own (most common) token per position; ``top_token_model``: the
    model's most likely one. A model against itself that was trained on nothing ranks its own
    argmax first, which need not be the answer's token; both are decoded strings."""
    model, tok = tiny_lm
    d = answer_position_divergence(model, model, tok, EXAMPLES[:1], n_positions=3)
    ids = tok("Mix flour and water, then bake it.", add_special_tokens=False)["input_ids"]
    assert list(d.token) == [tok.decode([i]) for i in ids[:3]]
    assert all(isinstance(x, str) and x for x in d.top_token_model)
    longer = answer_position_divergence(model, model, tok, EXAMPLES, n_positions=60)
    assert longer.token.iloc[-1] == "" and longer.n.iloc[-1] == 0  # no answer reaches it
