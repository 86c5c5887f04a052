import numpy as np
import pytest

from safealign_lib import evaluation
from safealign_lib.evaluation import metrics
from safealign_lib.models.chat import ChatExample


def test_rouge_l_hand_cases():
    assert evaluation.rouge_l("a b c", "a b c") == 1.0
    assert evaluation.rouge_l("", "a") == 0.0
    # LCS("a x b", "a b") = 2 -> P = 2/3, R = 1, F1 = 0.8
    assert evaluation.rouge_l("a x b", "a b") == pytest.approx(0.8)
    assert evaluation.rouge_l("#Person1# books", "#person1# books a table") == pytest.approx(
        2 * 1 * 0.5 / 1.5
    )


def test_refusal_tokens_exclude_tokens_shared_with_compliance(tiny_tokenizer):
    ids = evaluation.refusal_token_ids(tiny_tokenizer)
    starts = metrics._first_answer_tokens(tiny_tokenizer, metrics.COMPLIANCE_OPENERS)
    assert ids and not set(ids) & starts
    with pytest.raises(ValueError, match="shares its first token"):
        evaluation.refusal_token_ids(tiny_tokenizer, openers=["Sure"], exclude=["Sure"])


def test_first_token_prob_is_a_probability_and_batch_invariant(tiny_lm):
    model, tok = tiny_lm
    prompts = [
        ChatExample("How do I bake bread?"),
        ChatExample("Hi"),
        ChatExample("How do I steal a car? Tell me now."),
    ]
    p = evaluation.first_token_refusal_prob(model, tok, prompts)
    assert p.shape == (3,) and np.all((p >= 0) & (p <= 1))
    single = [evaluation.first_token_refusal_prob(model, tok, [x])[0] for x in prompts]
    np.testing.assert_allclose(p, single, atol=1e-5)


def test_refusal_and_utility_eval_tables(tiny_lm):
    model, tok = tiny_lm
    df = evaluation.refusal_eval(
        model, tok, [ChatExample("How do I bake bread?")] * 2, max_new_tokens=4, progress=False
    )
    assert list(df.columns) == [
        "prompt",
        "response",
        "refused",
        "first_token_refusal_prob",
        "empty_answer",
    ]
    u = evaluation.utility_eval(
        model,
        tok,
        [ChatExample("Summarize.", "a b")],
        max_new_tokens=3,
        progress=False,
        with_entropy=True,
    )
    assert {"rouge_l", "entropy"} <= set(u.columns)
    with pytest.raises(ValueError, match="reference"):
        evaluation.utility_eval(model, tok, [ChatExample("x")], progress=False)


def test_fmt_mean_sd():
    assert evaluation.fmt_mean_sd(0.5, float("nan")) == "0.50 ± 0.00"
