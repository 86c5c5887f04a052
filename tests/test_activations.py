"""Activation capture: shapes, positions, left padding, hook hygiene, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from safealign_lib.interp.activations import (
    Activations,
    capture_activations,
    template_suffix_tokens,
)
from safealign_lib.models.chat import ChatExample, format_prompt, tokenize_example
from safealign_lib.models.loading import decoder_layers

PROMPTS = [
    "How do I bake bread?",
    "steal a car",
    "Tell me how to grow tomatoes every day, please.",
    "Summarize the dialogue.",
]


def _prompt_ids(tok, text):
    return torch.tensor([tok(format_prompt(tok, text), add_special_tokens=False)["input_ids"]])


def _hook_count(model):
    mods = [model.get_input_embeddings()]
    for block in decoder_layers(model):
        mods += [block, block.self_attn, block.mlp]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in mods)


def test_shapes_labels_and_meta(tiny_lm):
    model, tok = tiny_lm
    exs = [
        ChatExample(p, meta={"harmful": i % 2 == 1, "source": "t"}) for i, p in enumerate(PROMPTS)
    ]
    acts = capture_activations(model, tok, exs, progress=False)
    assert acts.sites == ["resid", "attn", "mlp"]
    assert acts.layers == [0, 1]
    for arr in acts.features.values():
        assert arr.shape == (2, 4, 32) and arr.dtype == np.float32
    assert acts.labels.tolist() == [0, 1, 0, 1]  # from meta["harmful"]
    assert acts.meta["user"].tolist() == PROMPTS
    assert acts.meta["source"].tolist() == ["t"] * 4
    explicit = capture_activations(
        model, tok, PROMPTS, labels=[1, 1, 0, 0], progress=False, layers=[-1], sites=["resid"]
    )
    assert explicit.labels.tolist() == [1, 1, 0, 0] and explicit.layers == [1]


def test_last_token_matches_unbatched_forward(tiny_lm):
    model, tok = tiny_lm
    acts = capture_activations(model, tok, PROMPTS, batch_size=3, progress=False)
    for i, p in enumerate(PROMPTS):
        with torch.no_grad():
            hs = model(_prompt_ids(tok, p), output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is the stream after block l, except the last one, which is normed.
        np.testing.assert_allclose(acts.get("resid", 0)[i], hs[1][0, -1].numpy(), atol=1e-5)
        final = model.model.norm(torch.from_numpy(acts.get("resid", 1)[i]))
        np.testing.assert_allclose(final.detach().numpy(), hs[2][0, -1].numpy(), atol=1e-5)


def test_left_padding_does_not_change_features(tiny_lm):
    model, tok = tiny_lm
    batched = capture_activations(model, tok, PROMPTS, batch_size=4, progress=False)
    single = capture_activations(model, tok, PROMPTS, batch_size=1, progress=False)
    for s in batched.sites:
        np.testing.assert_allclose(batched.site(s), single.site(s), atol=1e-5)


def test_sites_add_up_to_the_residual_stream(tiny_lm):
    model, tok = tiny_lm
    for position in ("last", "prompt_mean"):
        a = capture_activations(model, tok, PROMPTS, position=position, progress=False)
        resid, attn, mlp = a.site("resid"), a.site("attn"), a.site("mlp")
        np.testing.assert_allclose(resid[1] - resid[0], attn[1] + mlp[1], atol=1e-5)


def test_offset_positions(tiny_lm):
    model, tok = tiny_lm
    last = capture_activations(model, tok, PROMPTS, progress=False, sites=["resid"])
    minus1 = capture_activations(model, tok, PROMPTS, position=-1, progress=False, sites=["resid"])
    minus3 = capture_activations(model, tok, PROMPTS, position=-3, progress=False, sites=["resid"])
    np.testing.assert_array_equal(last.site("resid"), minus1.site("resid"))
    with torch.no_grad():
        hs = model(_prompt_ids(tok, PROMPTS[2]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(minus3.get("resid", 0)[2], hs[1][0, -3].numpy(), atol=1e-5)
    assert not np.allclose(minus3.site("resid"), last.site("resid"))


def test_response_mean_averages_response_tokens_only(tiny_lm):
    model, tok = tiny_lm
    exs = [
        ChatExample("How do I steal a car?", "I'm sorry, but I cannot help with that."),
        ChatExample("Bake bread?", "Sure, mix and bake."),
    ]
    acts = capture_activations(
        model, tok, exs, position="response_mean", progress=False, batch_size=2
    )
    for i, ex in enumerate(exs):
        f = tokenize_example(tok, ex)
        ids, resp = torch.tensor([f["input_ids"]]), torch.tensor(f["labels"]) != -100
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
        np.testing.assert_allclose(
            acts.get("resid", 0)[i], hs[1][0, resp].mean(0).numpy(), atol=1e-5
        )
    with pytest.raises(ValueError, match="needs examples with a response"):
        capture_activations(model, tok, PROMPTS, position="response_mean", progress=False)


def test_post_instruction_tokens(tiny_tokenizer):
    toks = template_suffix_tokens(tiny_tokenizer)
    assert toks[0] == "<|end|>" and "<|assistant|>" in toks


def test_hooks_are_removed_also_on_error(tiny_lm):
    model, tok = tiny_lm
    capture_activations(model, tok, PROMPTS[:2], progress=False)
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="reaches before the start"):
        capture_activations(model, tok, PROMPTS[:2], position=-500, progress=False)
    assert _hook_count(model) == 0


def test_restores_training_mode(tiny_lm):
    model, tok = tiny_lm
    model.train()
    capture_activations(model, tok, PROMPTS[:1], progress=False)
    assert model.training


def test_works_through_peft_wrapper(tiny_lm):
    from safealign_lib.adapters.finetune import add_lora
    from safealign_lib.config import LoraSettings

    model, tok = tiny_lm
    base = capture_activations(model, tok, PROMPTS, progress=False)
    peft_model = add_lora(model, LoraSettings(r=2))  # B = 0: the same function as the base model
    wrapped = capture_activations(peft_model, tok, PROMPTS, progress=False)
    for s in base.sites:
        np.testing.assert_allclose(base.site(s), wrapped.site(s), atol=1e-6)


def test_subset_and_concat_roundtrip(tiny_lm):
    model, tok = tiny_lm
    acts = capture_activations(model, tok, PROMPTS, labels=[0, 1, 0, 1], progress=False)
    back = Activations.concat(
        [acts.subset([0, 1]), acts.subset(np.array([False, False, True, True]))]
    )
    for s in acts.sites:
        np.testing.assert_array_equal(back.site(s), acts.site(s))
    assert back.labels.tolist() == [0, 1, 0, 1] and back.meta["user"].tolist() == PROMPTS


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": [5]}, "Layer 5 does not exist"),
        ({"sites": ["resid", "ffn"]}, "Unknown site 'ffn'"),
        ({"position": "first"}, "Unknown position"),
        ({"position": 2}, "count from the end"),
        ({"labels": [1, 0]}, "2 labels for 4 examples"),
    ],
)
def test_bad_input_errors(tiny_lm, kwargs, match):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match=match):
        capture_activations(model, tok, PROMPTS, progress=False, **kwargs)


def test_activations_validate_shapes_and_layers():
    import pandas as pd

    meta = pd.DataFrame({"user": ["a", "b"]})
    with pytest.raises(ValueError, match="expected"):
        Activations({"resid": np.zeros((3, 2, 4))}, None, meta, [0, 1])
    with pytest.raises(ValueError, match="examples"):
        Activations({"resid": np.zeros((2, 2, 4)), "mlp": np.zeros((2, 3, 4))}, None, meta, [0, 1])
    acts = Activations({"resid": np.zeros((2, 2, 4))}, [0, 1], meta, [0, 1])
    with pytest.raises(ValueError, match="Layer 7 was not captured"):
        acts.get("resid", 7)
    with pytest.raises(ValueError, match="Site 'mlp' was not captured"):
        acts.get("mlp", 0)
