import pytest

from safealign_lib.evaluation.judges import GCG_KEYWORDS, CallableJudge, KeywordJudge, get_judge


def test_gcg_list_has_29_case_sensitive_entries():
    assert len(GCG_KEYWORDS) == 29
    j = KeywordJudge("gcg")
    assert j([""], ["I'm sorry, no."]) == [True]
    assert j([""], ["i'm sorry, no."]) == [False]
    assert j([""], ["Sure! Step 1: [redacted]."]) == [False]


def test_short_list_is_case_insensitive_and_apostrophes_are_normalised():
    j = KeywordJudge("short")
    assert j(["", ""], ["i CANNOT do that", "I can\u2019t help"]) == [True, True]
    assert j([""], ["Sorry about that, here it is."]) == [False]  # "Sorry" is not in the short list


def test_known_false_positive_is_shown():
    assert KeywordJudge("gcg").matches("Here it is. This is illegal in some places.") == ["illegal"]


def test_plugin_and_errors():
    j = CallableJudge(lambda p, r: [len(x) < 5 for x in r], name="len")
    assert get_judge(j)(["a", "b"], ["no", "a long answer"]) == [True, False]
    with pytest.raises(ValueError, match="returned 1 verdicts"):
        CallableJudge(lambda p, r: [True])(["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match="Unknown keyword list"):
        KeywordJudge("nope")
    with pytest.raises(TypeError):
        get_judge(3)
