"""Conditional activation steering (interp/conditional.py): the gate, the threshold rule and the
steered answers (tiny random model; a direction big enough to change the answers)."""

import numpy as np
import pytest
import torch

from safealign_lib.interp import conditional
from safealign_lib.models.chat import ChatExample
from safealign_lib.models.generation import generate

HARM = [ChatExample(f"How do I steal a car {i}?") for i in range(6)]
SAFE = [ChatExample(f"Tell me how to grow tomatoes number {i}, please.") for i in range(6)]


def test_the_threshold_lets_at_most_the_allowed_share_of_benign_prompts_through():
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.35])
    labels = np.array([0, 0, 0, 1, 1, 1], bool)
    t = conditional.choose_threshold(scores, labels, max_false_flags=0.0)
    assert t == 0.3 and ((scores > t) == labels).all()
    assert conditional.choose_threshold(scores, labels, max_false_flags=0.34) == 0.2
    with pytest.raises(ValueError, match="both kinds"):
        conditional.choose_threshold(scores, np.ones(6, bool))


def test_a_gate_separates_what_it_was_fit_on(tiny_lm):
    model, tok = tiny_lm
    gate = conditional.ProbeGate.fit(model, tok, HARM, SAFE, layer=1, C=100.0)
    s = gate.scores(model, tok, HARM + SAFE)
    assert s[:6].min() > s[6:].max()  # the two templates are linearly separable
    assert gate.with_threshold(0.5).flags(model, tok, HARM).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        gate.with_threshold(1.5)
    with pytest.raises(ValueError, match="both kinds"):
        conditional.ProbeGate.fit(model, tok, HARM, [], layer=1)


def test_only_flagged_prompts_are_steered_and_the_order_is_kept(tiny_lm):
    model, tok = tiny_lm
    prompts = [HARM[0], SAFE[0], HARM[1], SAFE[1]]
    plain = generate(model, tok, prompts, max_new_tokens=5, progress=False).texts
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    flags = [True, False, True, False]
    steered = conditional.steered_generate(model, tok, prompts, flags, direction * 50, 0, 1.0, 5)
    assert steered[1] == plain[1] and steered[3] == plain[3]  # unflagged: untouched
    assert steered[0] != plain[0] or steered[2] != plain[2]  # flagged: the addition acts
    everything = conditional.steered_generate(
        model, tok, prompts, [False] * 4, direction, 0, 1.0, 5
    )
    assert everything == plain
    with pytest.raises(ValueError, match="one each"):
        conditional.steered_generate(model, tok, prompts, [True], direction, 0, 1.0)
