import numpy as np

from safealign_lib.course import exercises
from safealign_lib.evaluation.judges import KeywordJudge


def test_keyword_judge_check():
    assert exercises.check_keyword_judge(lambda r, k: KeywordJudge(list(k))([""], [r])[0])
    assert not exercises.check_keyword_judge(
        lambda r, k: any(x in r for x in k)
    )  # no apostrophe handling
    assert not exercises.check_keyword_judge(
        lambda r, k: any(x.lower() in r.lower() for x in k)
    )  # case-insensitive
    assert not exercises.check_keyword_judge(lambda r, k: 1 / 0)


def test_first_token_prob_check():
    assert exercises.check_first_token_prob(lambda lg, ids: lg.softmax(-1)[:, ids].sum(-1))
    assert not exercises.check_first_token_prob(lambda lg, ids: lg.softmax(0)[:, ids].sum(-1))
    assert not exercises.check_first_token_prob(lambda lg, ids: lg[:, ids].sum(-1))


def test_mean_sd_check():
    assert exercises.check_mean_sd(lambda v: (np.mean(v), np.std(v, ddof=1)))
    assert not exercises.check_mean_sd(lambda v: (np.mean(v), np.std(v)))
