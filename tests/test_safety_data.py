"""Safety data for a fine-tune (data/safety_data.py): refusals from the alignment data only."""

import pytest

from safealign_lib import data
from safealign_lib.data import safety_data


def test_refusals_come_from_the_alignment_data_never_from_an_evaluation_split():
    exs = safety_data.refusal_examples(20, seed=3)
    assert len(exs) == 20 and all(e.meta["harmful"] for e in exs)
    assert [e.user for e in exs] == [e.user for e in safety_data.refusal_examples(20, seed=3)]
    evaluation = {
        e.user
        for name in (
            "harmful_heldout",
            "harmful_heldout_val",
            "harmful_unseen",
            "harmful_unseen_val",
        )
        for e in data.load_split(name)
    }
    assert not {e.user for e in exs} & evaluation
    refusals = tuple(r.split("{tu}")[0].strip() for r in data.REFUSALS)
    assert all(e.response.startswith(refusals) for e in exs)
    with pytest.raises(ValueError, match="the safety split's size"):
        safety_data.refusal_examples(10**6)


def test_mixing_keeps_every_example_and_adds_n():
    task = data.load_split("skill_train")[:30]
    mixed = safety_data.with_safety_data(task, 5, seed=1)
    assert len(mixed) == 35 and sum(e.meta["harmful"] for e in mixed) == 5
    assert {e.user for e in task} <= {e.user for e in mixed}
    assert mixed == safety_data.with_safety_data(task, 5, seed=1)
