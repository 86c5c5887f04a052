import pytest
import torch

from safealign_lib.adapters.finetune import add_lora, answer_loss, load_adapter, save_adapter, train
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.models.chat import ChatExample, collate, padding_id, tokenize_example

EXS = [
    ChatExample("How do I bake bread?", "Sure, mix and bake."),
    ChatExample("Hi", "Hello! How can I help?"),
] * 4


def _lora_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def _run(tiny_lm_factory, seed):
    model, tok = tiny_lm_factory()
    peft_model = add_lora(
        model, LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")), seed=seed
    )
    res = train(
        peft_model,
        tok,
        EXS,
        TrainSettings(lr=1e-2, steps=5, batch_size=3, seed=seed, progress=False),
    )
    return peft_model, tok, res


@pytest.fixture()
def factory(tiny_llama_factory, tiny_tokenizer):
    def make():
        return tiny_llama_factory(), tiny_tokenizer

    return make


def test_same_seed_same_weights_different_seed_different(factory):
    a, _, ra = _run(factory, 0)
    b, _, rb = _run(factory, 0)
    c, _, _ = _run(factory, 1)
    sa, sb, sc = _lora_state(a), _lora_state(b), _lora_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert ra.losses == rb.losses and len(ra.losses) == 5
    assert 0 < ra.n_trainable < ra.n_total


def test_training_lowers_the_loss(factory):
    model, tok = factory()
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    res = train(
        peft_model, tok, EXS, TrainSettings(lr=3e-2, steps=30, batch_size=4, progress=False)
    )
    assert sum(res.losses[-5:]) < sum(res.losses[:5])


def test_save_and_reload_give_the_same_logits(factory, tmp_path):
    model, tok, _ = _run(factory, 0)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    save_adapter(model, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    fresh, _ = factory()
    with torch.no_grad():
        got = load_adapter(fresh, tmp_path / "ad")(input_ids=ids).logits
    torch.testing.assert_close(got, want)


def test_errors(factory, tmp_path):
    model, tok = factory()
    with pytest.raises(ValueError, match="not found"):
        add_lora(model, LoraSettings(target_modules=("nope_proj",)))
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(r=0).to_peft()
    with pytest.raises(ValueError, match="empty"):
        train(add_lora(model, LoraSettings()), tok, [], TrainSettings(progress=False))
    with pytest.raises(FileNotFoundError, match="adapter_config"):
        load_adapter(model, tmp_path)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


class _AllLogits(torch.nn.Module):
    """A causal LM that ignores ``logits_to_keep`` (returns every position's logits)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, logits_to_keep=None, **kw):
        return self.model(**kw)


def test_answer_loss_is_the_models_loss_with_the_same_gradients(factory):
    model, tok = factory()
    peft_model = add_lora(model, LoraSettings(r=4, alpha=8), seed=0)
    with torch.no_grad():  # B != 0, so that A's gradient is not zero by construction
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    # answers of different lengths: rows with padding, and prompts that carry no targets
    exs = [ChatExample("How do I bake bread?", "Sure, mix and bake."), ChatExample("Hi", "Hi!")]
    feats = [tokenize_example(tok, e) for e in exs]
    batch = collate(feats, padding_id(tok))
    want = peft_model(**batch).loss
    g_want = _grads(peft_model, want)
    for m in (peft_model, _AllLogits(peft_model)):
        got = answer_loss(m, batch)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        g_got = _grads(peft_model, got)
        assert g_got.keys() == g_want.keys() and g_got
        for n in g_want:
            torch.testing.assert_close(g_got[n], g_want[n], rtol=1e-5, atol=1e-7)
    # a target moved by one position is a different loss: the shift is checked, not assumed
    shifted = dict(batch, labels=torch.roll(batch["labels"], 1, dims=1))
    assert not torch.allclose(answer_loss(peft_model, shifted), want)


def test_a_batch_without_targets_is_named(factory):
    model, tok = factory()
    feats = [tokenize_example(tok, e) for e in EXS[:2]]
    batch = collate(feats, padding_id(tok))
    batch["labels"][:] = -100
    with pytest.raises(ValueError, match="no target tokens.*max_length"):
        answer_loss(model, batch)
