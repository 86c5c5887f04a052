"""The answer and fine-tune cache (issue 25: nothing computed twice, nothing stale): a repeated
call is read back with the same result; a change to the weights, a flag, the inputs, the
settings or the code computes again; a hooked model is never cached; a corrupt entry is
recomputed; training restores the weights and the random generators exactly."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from safealign_lib.adapters import constrained, finetune, train_memo
from safealign_lib.adapters.finetune import add_lora, train
from safealign_lib.config import ANSWER_CACHE_ENV, LoraSettings, TrainSettings
from safealign_lib.evaluation import metrics
from safealign_lib.models import generation, memo
from safealign_lib.models.chat import ChatExample

PROMPTS = [ChatExample("How do I bake bread?"), ChatExample("Hi"), ChatExample("Tell me more.")]
EXS = [
    ChatExample("How do I bake bread?", "Sure, mix and bake."),
    ChatExample("Hi", "Hello! How can I help?"),
] * 4
LORA = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
SETTINGS = TrainSettings(lr=1e-2, steps=4, batch_size=3, seed=0, progress=False)


@pytest.fixture()
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv(ANSWER_CACHE_ENV, str(tmp_path / "answers"))
    return tmp_path / "answers"


@pytest.fixture()
def counted(monkeypatch):
    """Counts the real computations behind generate and first_token_refusal_prob."""
    calls = {"generate": 0, "first_token": 0}
    real_gen, real_ft = generation._generate, metrics._first_token_probs

    def gen(*a, **k):
        calls["generate"] += 1
        return real_gen(*a, **k)

    def ft(*a, **k):
        calls["first_token"] += 1
        return real_ft(*a, **k)

    monkeypatch.setattr(generation, "_generate", gen)
    monkeypatch.setattr(metrics, "_first_token_probs", ft)
    return calls


def _gen(model, tok, **kw):
    return generation.generate(model, tok, PROMPTS, max_new_tokens=5, progress=False, **kw)


def test_off_by_default_computes_every_time(lora_lm, counted, tmp_path):
    model, tok = lora_lm
    _gen(model, tok)
    _gen(model, tok)
    assert counted["generate"] == 2 and memo.folder() is None


def test_a_repeated_call_is_read_back_with_the_same_answers(lora_lm, counted, cache_on):
    model, tok = lora_lm
    first = _gen(model, tok, with_entropy=True)
    again = _gen(model, tok, with_entropy=True)
    assert counted["generate"] == 1
    assert again == first and again.entropy is not None
    p1 = metrics.first_token_refusal_prob(model, tok, PROMPTS)
    p2 = metrics.first_token_refusal_prob(model, tok, PROMPTS)
    assert counted["first_token"] == 1 and p2.dtype == p1.dtype and np.array_equal(p1, p2)
    assert len(list(cache_on.rglob("*.json"))) == 2


def test_what_changes_the_answers_changes_the_key(lora_lm, counted, cache_on, monkeypatch):
    model, tok = lora_lm
    _gen(model, tok)
    generation.generate(model, tok, PROMPTS, max_new_tokens=4, progress=False)  # a setting
    generation.generate(model, tok, PROMPTS[:2], max_new_tokens=5, progress=False)  # the inputs
    with model.disable_adapter():  # a flag, no weight changed
        _gen(model, tok)
    name, p = next((n, p) for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        p.mul_(0.5)  # a weight changed in place
    _gen(model, tok)
    monkeypatch.setattr(generation, "_CODE", "another version of the code")
    _gen(model, tok)
    assert counted["generate"] == 6


def test_a_model_with_a_forward_hook_is_never_cached(lora_lm, counted, cache_on):
    model, tok = lora_lm
    layer = model.base_model.model.model.layers[0]
    handle = layer.register_forward_hook(lambda mod, args, out: None)
    try:
        assert memo.model_digest(model) is None
        _gen(model, tok)
        _gen(model, tok)
    finally:
        handle.remove()
    assert counted["generate"] == 2 and not list(cache_on.rglob("*.json"))


def test_a_corrupt_entry_is_computed_again_and_rewritten(lora_lm, counted, cache_on):
    model, tok = lora_lm
    first = _gen(model, tok)
    (entry,) = cache_on.rglob("*.json")
    entry.write_text('{"spec": {"half a')
    assert _gen(model, tok) == first and counted["generate"] == 2
    assert _gen(model, tok) == first and counted["generate"] == 2  # rewritten whole


def _train(factory, settings=SETTINGS, loss_fn=None):
    model, tok = factory()
    peft_model = add_lora(model, LORA, seed=0)
    res = train(peft_model, tok, EXS, settings, loss_fn=loss_fn)
    state = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    return res, state


@pytest.fixture()
def factory(tiny_llama_factory, tiny_tokenizer):
    return lambda: (tiny_llama_factory(), tiny_tokenizer)


@pytest.fixture()
def loops(monkeypatch):
    calls = []
    real = finetune._train

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(finetune, "_train", counted)
    return calls


def test_a_cached_fine_tune_gives_the_same_weights_and_random_state(factory, loops, cache_on):
    res, state = _train(factory)
    after = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    res2, state2 = _train(factory)
    after2 = (torch.rand(3), np.random.rand(), random.random())  # noqa: NPY002
    assert len(loops) == 1 and res2.cached and not res.cached
    assert res2.losses == res.losses and res2.seconds == res.seconds
    assert all(torch.equal(state[n], state2[n]) for n in state)
    assert torch.equal(after[0], after2[0]) and after[1:] == after2[1:]


def test_what_changes_a_fine_tune_trains_again(factory, loops, cache_on):
    _train(factory)
    _train(factory, dataclasses.replace(SETTINGS, lr=2e-2))  # a setting
    _train(factory, dataclasses.replace(SETTINGS, progress=True))  # not a setting: cached
    assert len(loops) == 2
    c = constrained.Constraint()
    _train(factory, loss_fn=constrained.constrained_objective(c))  # another objective
    _train(factory, loss_fn=constrained.constrained_objective(c))  # the same: cached
    assert len(loops) == 3
    other = dataclasses.replace(c, beta=c.beta * 2)
    _train(factory, loss_fn=constrained.constrained_objective(other))
    assert len(loops) == 4


def test_an_objective_the_key_cannot_read_is_never_cached(factory, loops, cache_on):
    model, _ = factory()
    loss = lambda m, b: finetune.answer_loss(m, b)  # noqa: E731 - closes over nothing
    assert train_memo.objective_key(loss) is not None
    held = [model]  # a model in the closure: not a setting the key can read
    odd = lambda m, b: finetune.answer_loss(m, b) * len(held)  # noqa: E731
    _train(factory, loss_fn=odd)
    _train(factory, loss_fn=odd)
    assert len(loops) == 2


def test_a_corrupt_weights_file_trains_again(factory, loops, cache_on):
    res, state = _train(factory)
    (weights,) = cache_on.rglob("*.safetensors")
    weights.write_bytes(b"not safetensors")
    res2, state2 = _train(factory)
    assert len(loops) == 2 and not res2.cached
    assert all(torch.equal(state[n], state2[n]) for n in state)


def test_the_organisms_notebooks_turn_it_on_and_the_hub_profiles_do_not(tmp_path, monkeypatch):
    from safealign_lib.course import setup

    monkeypatch.setenv("SAFEALIGN_BUILD", str(tmp_path))
    setup.notebook_setup("smoke", quiet=True)
    assert memo.folder() == tmp_path / "answers"
    monkeypatch.delenv(ANSWER_CACHE_ENV)
    monkeypatch.setattr(setup, "validate", lambda profile: [])  # no GPU needed to set it up
    from safealign_lib.models.loading import allow_hub

    try:
        setup.notebook_setup("gpu", quiet=True)
    finally:
        allow_hub(False)
    assert memo.folder() is None
