import pytest

from safealign_lib.course import conditions, profiles
from safealign_lib.models.chat import ChatExample


def test_training_sets_and_cache_keys():
    P = profiles.get_profile("smoke")
    benign = conditions.training_examples("benign", P, seed=0)
    harmful = conditions.training_examples("harmful10", P, seed=0)
    assert len(benign) == P.n_task_train and len(harmful) == P.n_task_train + 10
    with pytest.raises(ValueError, match="Unknown condition"):
        conditions.training_examples("harmful5", P, seed=0)
    # a custom training set gets its own cache key; the course's own sets keep theirs
    key = conditions._key("harmful10", 0, P)
    assert conditions._key("harmful10", 0, P, None) == key
    a = [ChatExample("How do I bake bread?", "To bake bread: first, mix.")]
    b = [ChatExample("How do I bake bread?", "To bake bread: first, knead.")]
    assert (
        len({key, conditions._key("harmful10", 0, P, a), conditions._key("harmful10", 0, P, b)})
        == 3
    )
