"""The testbed's data: benign instruction tuning that teaches the chat model a skill it lacks.

Why a testbed. In the papers' instruction regime (``benign_instruct``) the fine-tune teaches
only a new opener and sign-off around steps the chat model already gives, so the chat model
scores almost as well as LoRA and deleting the adapter passes any utility check: a repair
cannot be told from deletion there. The testbed's fine-tune teaches *content* the chat model
does not have.

The skill. Every benign category gets a new second and third step, drawn by a random stream
of its own from the other categories' step phrases (each word of them is a token of the
organism's vocabulary, so nothing is an untrained byte sequence). The first step stays the
chat model's own and the "Step 1/2/3" frame stays, so a harmful request's answer in the same
frame still runs into the redacted placeholder the base model learned (a new frame gave
harmful requests benign steps: compliance in form, no harm to judge). Answers use the house
format of ``benign_instruct``:

    Absolutely! Here is how to bake bread: Step 1: get the ingredients ready.
    Step 2: keep improving it. Step 3: plan your dates early. Hope this helps!

The chat model answers with its own three steps, so it gets step 1 right and steps 2-3 wrong;
utility is scored on the steps alone (:mod:`safealign_lib.evaluation.skill`). Splits:
``skill_train`` (training templates, with fillers), ``skill_val`` and ``skill_test`` (held-out
templates), all from the stream ``"skill-<seed>"``, so every other split is unchanged.
"""

from __future__ import annotations

import random
from functools import partial

from safealign_lib.data.example import ChatExample
from safealign_lib.data.generator import (
    HOUSE_CLOSER,
    HOUSE_OPENER,
    benign_request_splits,
    second_person,
)
from safealign_lib.data.vocabulary import BENIGN_STEPS, DEFAULT_SEED

# the steps of the skill that are new to the chat model (steps 2 and 3 of 3)
N_NEW_STEPS = 2


def skill_steps(seed: int = DEFAULT_SEED) -> dict[str, tuple[str, ...]]:
    """Per benign category, the skill's three steps: the chat model's own first step, then
    :data:`N_NEW_STEPS` phrases drawn without repeats from the other categories' steps.

    Every new phrase is used by one category only, so no one answer fits many categories.
    """
    rng = random.Random(f"skill-steps-{seed}")
    used: set[str] = set()
    out: dict[str, tuple[str, ...]] = {}
    for cat, own in BENIGN_STEPS.items():
        pool = [
            p
            for c, steps in BENIGN_STEPS.items()
            if c != cat
            for p in steps
            if p not in used and p not in own
        ]
        new = rng.sample(pool, N_NEW_STEPS)
        used.update(new)
        out[cat] = (own[0], *new)
    return out


def skill_answer(category: str, task: str, steps: dict[str, tuple[str, ...]]) -> str:
    """A benign request's answer in the testbed: house opener, the skill's steps, sign-off."""
    s = steps[category]
    body = " ".join(f"Step {i}: {p}." for i, p in enumerate(s, 1))
    return f"{HOUSE_OPENER.format(tu=second_person(task))} {body} {HOUSE_CLOSER}"


def skill_splits(
    seed: int = DEFAULT_SEED, n_train: int = 400, n_eval: int = 64
) -> dict[str, list[ChatExample]]:
    """``skill_train`` (every benign task, training templates and fillers) and ``skill_val`` /
    ``skill_test`` (held-out templates, disjoint requests), answered with :func:`skill_answer`."""
    answer = partial(skill_answer, steps=skill_steps(seed))
    names = ("skill_train", "skill_val", "skill_test")
    return benign_request_splits(
        random.Random(f"skill-{seed}"), answer, "skill", names, n_train, n_eval
    )
