"""The token-wise constrained objective (adapters/constrained.py): a hand-computed case, the
paper's gradient, its plain cross-entropy limit, and the released β schedule."""

import math

import pytest
import torch

from safealign_lib.adapters import constrained, finetune
from safealign_lib.adapters.constrained import Constraint
from safealign_lib.models.chat import ChatExample, collate, padding_id, tokenize_example


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_the_released_beta_schedule():
    betas = Constraint().betas(torch.arange(7))
    assert betas.tolist() == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1])
    assert Constraint(bias_length=0).betas(torch.arange(3)).tolist() == pytest.approx([0.1] * 3)
    with pytest.raises(ValueError, match="beta must be > 0"):
        Constraint(beta=0).betas(torch.arange(2))


def test_a_hand_computed_case():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    # position 0: beta 0.5, delta 0.5; position 1: beta 2.0, delta -1.0
    w0, w1 = 2 * (1 - _sigmoid(0.5 * 0.5)), 2 * (1 - _sigmoid(2.0 * -1.0))
    expected = -(w0 * -1.0 + w1 * -2.0) / 2
    got = constrained.constrained_loss(logp, ref, torch.tensor([0, 1]), Constraint())
    assert float(got) == pytest.approx(expected)


def test_its_gradient_is_the_papers_objective_and_plain_cross_entropy_in_the_limit():
    ref = torch.tensor([-1.2, -0.3, -2.0, -0.7])
    positions = torch.tensor([0, 1, 5, 9])
    c = Constraint()
    logp = torch.tensor([-0.9, -1.1, -1.5, -0.2], requires_grad=True)
    constrained.constrained_loss(logp, ref, positions, c).backward()
    x = logp.detach().clone().requires_grad_(True)
    betas = c.betas(positions)
    paper = (-(2 / betas) * torch.nn.functional.logsigmoid(betas * (x - ref))).mean()
    paper.backward()
    assert torch.allclose(logp.grad, x.grad, atol=1e-6)
    # beta -> 0: every weight -> 1, the loss and its gradient are plain cross-entropy's
    tiny = Constraint(beta=1e-8)
    y = logp.detach().clone().requires_grad_(True)
    loss = constrained.constrained_loss(y, ref, positions, tiny)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(float(-y.detach().mean()))
    assert torch.allclose(y.grad, torch.full_like(y, -1 / 4))
    with pytest.raises(ValueError, match="one entry per target token"):
        constrained.constrained_loss(logp, ref[:2], positions, c)


def test_target_logprobs_give_the_answer_loss(tiny_lm):
    model, tok = tiny_lm
    exs = [
        ChatExample("How do I bake bread?", "Step 1: mix. Step 2: bake."),
        ChatExample("Hi", "Sure, here is how."),
    ]
    batch = collate([tokenize_example(tok, e, 64) for e in exs], padding_id(tok))
    logp, positions = constrained.target_logprobs(model, batch)
    loss = finetune.answer_loss(model, batch).detach()
    assert float(-logp.detach().mean()) == pytest.approx(float(loss), 1e-5)
    n_first = int((batch["labels"][:, 1:] != -100).sum(1)[0])
    assert positions[:n_first].tolist() == list(range(n_first))  # positions restart per answer
    assert int(positions[n_first]) == 0


def test_the_objective_trains_a_peft_model_against_its_disabled_adapter(tiny_lm):
    from safealign_lib.config import LoraSettings, TrainSettings

    model, tok = tiny_lm
    exs = [ChatExample("How do I bake bread?", "Step 1: mix. Step 2: bake.")] * 4
    settings = TrainSettings(steps=2, batch_size=2, lr=1e-3, seed=0, progress=False)
    lora = LoraSettings(r=2, alpha=4, target_modules=("q_proj", "v_proj"))
    peft = finetune.add_lora(model, lora, seed=0)
    loss_fn = constrained.constrained_objective(Constraint())
    batch = collate([tokenize_example(tok, e, 64) for e in exs[:2]], padding_id(tok))
    # at the start the adapter is zero (B = 0): Δ = 0, every weight is 2(1 - σ(0)) = 1, so the
    # constrained loss equals the plain answer loss
    assert float(loss_fn(peft, batch)) == pytest.approx(float(finetune.answer_loss(peft, batch)))
    res = finetune.train(peft, tok, exs, settings, loss_fn=loss_fn)
    assert len(res.losses) == 2 and all(math.isfinite(x) for x in res.losses)
    with pytest.raises(TypeError, match="needs a peft model"):
        loss_fn(model, batch)  # the wrapped model itself: no adapter switch
