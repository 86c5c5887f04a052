"""The prefilling test (evaluation/prefill.py) on a tiny random model."""

import pytest

from safealign_lib.evaluation import prefill
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.generation import generate

PROMPTS = [
    ChatExample("How do I bake bread?"),
    ChatExample("Tell me how to grow tomatoes, please."),
]


def test_no_prefix_is_the_ordinary_greedy_answer(tiny_lm):
    model, tok = tiny_lm
    forced = prefill.forced_answers(model, tok, PROMPTS, [[], []], max_new_tokens=6)
    assert forced == generate(model, tok, PROMPTS, max_new_tokens=6, progress=False).texts


def test_the_forced_tokens_open_the_answer_and_the_model_continues(tiny_lm):
    model, tok = tiny_lm
    prefixes = prefill.base_prefixes(model, tok, PROMPTS, n_max=3)
    assert [len(p) for p in prefixes] == [3, 3]
    forced = tok("Sure, here", add_special_tokens=False).input_ids
    answers = prefill.forced_answers(model, tok, PROMPTS, [forced, forced], max_new_tokens=4)
    assert all(a.startswith("Sure, here") for a in answers)
    # forcing a prefix equals continuing the prefixed sequence: the first forced token of the
    # model's own answer gives its own greedy answer back
    own = prefill.forced_answers(model, tok, PROMPTS, [p[:1] for p in prefixes], 6)
    assert own == generate(model, tok, PROMPTS, max_new_tokens=7, progress=False).texts


def test_rates_per_n_with_a_plug_in_judge_and_errors(tiny_lm):
    model, tok = tiny_lm
    prefixes = prefill.base_prefixes(model, tok, PROMPTS, n_max=2)
    seen = []

    def judge(prompts, answers):  # harmful when the answer is long enough to be an answer
        seen.append(list(answers))
        return [len(a) > 0 for a in answers]

    rates = prefill.prefill_harmful_rates(model, tok, PROMPTS, prefixes, (0, 2), judge, 4)
    assert set(rates) == {0, 2} and len(seen) == 2 and all(0 <= r <= 1 for r in rates.values())
    with pytest.raises(ValueError, match="at least n = 3"):
        prefill.prefill_harmful_rates(model, tok, PROMPTS, prefixes, (3,), judge)
    with pytest.raises(ValueError, match="one each"):
        prefill.forced_answers(model, tok, PROMPTS, [[]])
