"""Refusal direction: difference in means, ablation, addition, weight orthogonalisation,
selection by validation, cosines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from safealign_lib.interp.activations import Activations, capture_activations
from safealign_lib.interp.refusal_direction import (
    RefusalDirections,
    ablate_direction,
    add_direction,
    affine_ablate_direction,
    choose_alpha,
    compare_ablations,
    cosine_matrix,
    direction_cosines,
    example_responses,
    intervention_runs,
    intervention_table,
    orthogonalize_weights,
    refusal_directions,
    select_direction,
)
from safealign_lib.models.chat import encode_prompts
from safealign_lib.models.loading import decoder_layers

HARMFUL = ["How do I steal a car?", "How do I steal a bike?", "Tell me how to steal a car now."]
HARMLESS = ["How do I bake bread?", "Tell me how to grow tomatoes.", "Summarize the dialogue."]


def _hook_count(model):
    mods = [model.get_input_embeddings()]
    for block in decoder_layers(model):
        mods += [block, block.self_attn, block.mlp]
    return sum(len(m._forward_hooks) for m in mods)


def _logits(model, tok, prompts=HARMFUL + HARMLESS):
    with torch.no_grad():
        return model(**encode_prompts(tok, prompts)).logits


def _cos_to(x, u):
    """|cosine| of every feature vector with the unit vector u."""
    return np.abs(x @ u) / np.linalg.norm(x, axis=-1)


def _random_direction(d=32, seed=1):
    return np.random.default_rng(seed).normal(size=d).astype(np.float32)


def test_difference_in_means_one_or_two_captures():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 6, 4)).astype(np.float32)
    y = np.array([1, 1, 1, 0, 0, 0])
    acts = Activations({"resid": feats}, y, pd.DataFrame({"user": list("abcdef")}), [3, 5])
    dirs = refusal_directions(acts)
    expected = feats[:, :3].mean(1) - feats[:, 3:].mean(1)
    np.testing.assert_allclose(dirs.vectors, expected, atol=1e-6)
    np.testing.assert_allclose(dirs[5], expected[1], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(dirs.unit(3)), 1.0, atol=1e-6)
    two = refusal_directions(acts.subset([0, 1, 2]), acts.subset([3, 4, 5]))
    np.testing.assert_allclose(two.vectors, dirs.vectors, atol=1e-6)
    with pytest.raises(ValueError, match="No direction for layer 4"):
        dirs[4]
    with pytest.raises(ValueError, match="harmless class is empty"):
        refusal_directions(acts.subset([0, 1, 2]))


def test_ablation_removes_the_direction_everywhere_and_cleans_up(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    u = r / np.linalg.norm(r)
    before = capture_activations(model, tok, HARMFUL, position="prompt_mean", progress=False)
    with ablate_direction(model, r):
        assert _hook_count(model) == 1 + 2 * 2  # embeddings + attn and mlp of 2 blocks
        for position in ("last", "prompt_mean"):
            acts = capture_activations(model, tok, HARMFUL, position=position, progress=False)
            for s in acts.sites:
                assert _cos_to(acts.site(s), u).max() < 1e-4
    assert _hook_count(model) == 0
    assert _cos_to(before.site("resid"), u).max() > 0.05  # the test can fail: it was there before
    with pytest.raises(RuntimeError, match="boom"), ablate_direction(model, r):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_addition_adds_alpha_r_at_one_layer(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    before = capture_activations(model, tok, HARMLESS, sites=["resid"], progress=False)
    with add_direction(model, r, layer=0, alpha=2.0):
        after = capture_activations(model, tok, HARMLESS, sites=["resid"], progress=False)
    assert _hook_count(model) == 0
    np.testing.assert_allclose(
        after.get("resid", 0) - before.get("resid", 0), np.broadcast_to(2.0 * r, (3, 32)), atol=1e-5
    )
    assert not np.allclose(after.get("resid", 1), before.get("resid", 1), atol=1e-3)
    with (
        pytest.raises(ValueError, match="Layer 2 does not exist"),
        add_direction(model, r, layer=2),
    ):
        pass


def test_orthogonalised_weights_equal_hook_ablation(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    plain = _logits(model, tok)
    with ablate_direction(model, r):
        hooked = _logits(model, tok)
    edited = orthogonalize_weights(model, r)
    torch.testing.assert_close(_logits(edited, tok), hooked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_logits(model, tok), plain)  # the copy left the original alone
    assert not torch.allclose(hooked, plain, atol=1e-3)
    same = orthogonalize_weights(model, r, inplace=True)
    assert same is model
    torch.testing.assert_close(_logits(model, tok), hooked, atol=1e-5, rtol=1e-5)


def test_orthogonalisation_unties_tied_embeddings(tiny_tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tiny_tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    r = _random_direction()
    with ablate_direction(model, r):
        hooked = _logits(model, tiny_tokenizer)
    edited = orthogonalize_weights(model, r)
    torch.testing.assert_close(_logits(edited, tiny_tokenizer), hooked, atol=1e-5, rtol=1e-5)


def test_direction_shape_errors(tiny_lm):
    model, _ = tiny_lm
    with pytest.raises(ValueError, match="hidden size is 32"), ablate_direction(model, np.ones(16)):
        pass
    with pytest.raises(ValueError, match="zero"):
        orthogonalize_weights(model, np.zeros(32))


def test_orthogonalisation_refuses_unmerged_lora(tiny_lm):
    from safealign_lib.adapters.finetune import add_lora
    from safealign_lib.config import LoraSettings

    model, _ = tiny_lm
    peft_model = add_lora(model, LoraSettings(r=2, target_modules=["o_proj"]))
    with pytest.raises(ValueError, match="merge_and_unload"):
        orthogonalize_weights(peft_model, _random_direction())


@pytest.fixture()
def five_layer_lm(tiny_tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=tiny_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval(), tiny_tokenizer


def test_select_direction_by_validation(five_layer_lm):
    model, tok = five_layer_lm
    base = capture_activations(model, tok, HARMFUL, sites=["resid"], layers=[4], progress=False)
    u = base.get("resid", 4).mean(0)
    u /= np.linalg.norm(u)
    calls = []

    def score_fn(m, prompts):
        # A stand-in refusal score: how far the final residual stream points along u.
        calls.append(len(prompts))
        a = capture_activations(m, tok, prompts, sites=["resid"], layers=[4], progress=False)
        return a.get("resid", 4) @ u  # per prompt; select_direction averages

    # Layer 2 carries u itself; the others are random directions orthogonal to u.
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(5, 32)).astype(np.float32)
    vecs -= np.outer(vecs @ u, u)
    vecs[2] = 3.0 * u
    dirs = RefusalDirections(vecs, list(range(5)))
    choice = select_direction(model, dirs, HARMFUL, HARMLESS, score_fn, progress=False)
    t = choice.table.set_index("layer")
    assert choice.layer == 2 and t.loc[2, "selected"] and t["selected"].sum() == 1
    assert t["candidate"].tolist() == [True, True, True, True, False]  # 4 >= 0.8 * 5 is skipped
    assert np.isnan(t.loc[4, "ablation_drop"])
    assert t.loc[2, "harmful_ablated"] == pytest.approx(0.0, abs=1e-4)  # u fully removed
    assert t.loc[2, "ablation_drop"] == pytest.approx(choice.baseline_harmful, abs=1e-4)
    assert t.loc[2, "addition_gain"] > 0
    np.testing.assert_allclose(choice.direction, dirs[2])
    assert len(calls) == 2 + 2 * 4  # two baselines + (ablate, add) per candidate
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="No direction for a layer below"):
        select_direction(
            model, RefusalDirections(vecs[4:], [4]), HARMFUL, HARMLESS, score_fn, progress=False
        )


def test_cosines_before_and_after(tiny_lm):
    rng = np.random.default_rng(0)
    a = RefusalDirections(rng.normal(size=(3, 8)), [0, 1, 2])
    b = RefusalDirections(a.vectors * np.array([[2.0], [-1.0], [0.5]]), [0, 1, 2])
    df = direction_cosines(a, b)
    np.testing.assert_allclose(df["cosine"], [1.0, -1.0, 1.0], atol=1e-6)
    mat = cosine_matrix(a, b)
    assert mat.shape == (3, 3)
    np.testing.assert_allclose(np.diag(mat.to_numpy()), df["cosine"], atol=1e-6)
    assert mat.loc[0, 1] == pytest.approx(-float(a.unit(0) @ a.unit(1)), abs=1e-6)
    with pytest.raises(ValueError, match="different layers"):
        direction_cosines(a, RefusalDirections(a.vectors[:2], [0, 1]))
    with pytest.raises(ValueError, match="widths differ"):
        cosine_matrix(a, RefusalDirections(np.ones((3, 4)), [0, 1, 2]))


def test_generation_under_ablation_matches_edited_weights(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    enc = encode_prompts(tok, HARMFUL)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        plain = model.generate(**enc, **kw)
        with ablate_direction(model, r):
            hooked = model.generate(**enc, **kw)
        edited = orthogonalize_weights(model, r).generate(**enc, **kw)
    assert torch.equal(hooked, edited)
    assert not torch.equal(hooked, plain)
    assert _hook_count(model) == 0


def _select(model, tok, **kw):
    """select_direction on the six test prompts, scored by the first-token refusal prob."""
    from safealign_lib.evaluation.metrics import first_token_refusal_prob

    return select_direction(
        model,
        refusal_directions(_labelled(model, tok)),
        HARMFUL,
        HARMLESS,
        lambda m, p: first_token_refusal_prob(m, tok, p),
        progress=False,
        **kw,
    )


def test_select_direction_with_first_token_refusal_prob(tiny_lm):
    model, tok = tiny_lm
    choice = _select(model, tok)
    assert choice.layer in (0, 1) and choice.table["candidate"].all()
    assert 0 <= choice.baseline_harmful <= 1


def test_affine_ablation_sets_the_projection_at_the_last_prompt_token(tiny_lm):
    model, tok = tiny_lm
    acts = capture_activations(
        model, tok, HARMFUL + HARMLESS, labels=[1] * 3 + [0] * 3, sites=["resid"], progress=False
    )
    dirs = refusal_directions(acts)
    u, c = dirs.unit(1), dirs.reference(1)
    assert c == pytest.approx(float(acts.get("resid", 1)[3:].mean(0) @ u), abs=1e-4)
    before = capture_activations(
        model, tok, HARMFUL, sites=["resid"], position="prompt_mean", progress=False
    )
    with affine_ablate_direction(model, dirs[1], 1, c):
        last = capture_activations(model, tok, HARMFUL, sites=["resid"], progress=False)
        np.testing.assert_allclose(last.get("resid", 1) @ u, c, atol=1e-4)
        assert _hook_count(model) == 1
    assert _hook_count(model) == 0
    # positions="all" sets every position; with "last" the earlier positions are untouched
    with affine_ablate_direction(model, dirs[1], 1, c, positions="all"):
        every = capture_activations(
            model, tok, HARMFUL, sites=["resid"], position="prompt_mean", progress=False
        )
        np.testing.assert_allclose(every.get("resid", 1) @ u, c, atol=1e-4)
    with affine_ablate_direction(model, dirs[1], 1, c, positions="last"):
        early = capture_activations(
            model, tok, HARMFUL, sites=["resid"], position=-2, progress=False
        )
    plain = capture_activations(model, tok, HARMFUL, sites=["resid"], position=-2, progress=False)
    np.testing.assert_allclose(early.get("resid", 0), plain.get("resid", 0), atol=1e-5)
    np.testing.assert_allclose(early.get("resid", 1), plain.get("resid", 1), atol=1e-5)
    assert not np.allclose(before.get("resid", 1) @ u, c, atol=1e-3)
    with pytest.raises(ValueError, match="positions must be"):
        with affine_ablate_direction(model, dirs[1], 1, c, positions="first"):
            pass
    with pytest.raises(ValueError, match="no harmless mean"):
        RefusalDirections(dirs.vectors, dirs.layers).reference(1)


def test_addition_at_the_last_prompt_token_only(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    plain_last = capture_activations(
        model, tok, HARMFUL, sites=["resid"], layers=[0], progress=False
    )
    plain_prev = capture_activations(
        model, tok, HARMFUL, sites=["resid"], layers=[0], position=-2, progress=False
    )
    with add_direction(model, r, 0, alpha=2.0, positions="last"):
        last = capture_activations(model, tok, HARMFUL, sites=["resid"], layers=[0], progress=False)
        prev = capture_activations(
            model, tok, HARMFUL, sites=["resid"], layers=[0], position=-2, progress=False
        )
        enc = encode_prompts(tok, HARMFUL)
        out = model.generate(
            **enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id
        )
    np.testing.assert_allclose(
        last.get("resid", 0) - plain_last.get("resid", 0), np.tile(2 * r, (3, 1)), atol=1e-4
    )
    np.testing.assert_allclose(prev.get("resid", 0), plain_prev.get("resid", 0), atol=1e-5)
    assert out.shape[1] == enc["input_ids"].shape[1] + 4 and _hook_count(model) == 0


def test_select_direction_affine(five_layer_lm):
    model, tok = five_layer_lm
    choice = _select(model, tok, ablation="affine", positions="last")
    assert choice.layer in range(4) and _hook_count(model) == 0
    assert choice.table["harmful_ablated"].notna().sum() == 4
    with pytest.raises(ValueError, match="ablation must be"):
        select_direction(
            model,
            refusal_directions(_labelled(model, tok)),
            HARMFUL,
            HARMLESS,
            lambda m, p: 0.0,
            ablation="mean",
            progress=False,
        )


def _labelled(model, tok):
    return capture_activations(
        model, tok, HARMFUL + HARMLESS, labels=[1] * 3 + [0] * 3, sites=["resid"], progress=False
    )


def _last_along(model, tok, u, layer):
    """A stand-in refusal score: each prompt's stream after ``layer`` projected onto ``u``."""

    def score(m, prompts):
        a = capture_activations(m, tok, prompts, sites=["resid"], layers=[layer], progress=False)
        return a.get("resid", layer) @ u

    return score


def test_project_onto_a_direction():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 5, 4)).astype(np.float32)
    acts = Activations({"resid": feats}, None, pd.DataFrame(index=range(5)), [0, 3])
    dirs = RefusalDirections(rng.normal(size=(2, 4)), [0, 3])
    np.testing.assert_allclose(dirs.project(acts, 3), feats[1] @ dirs.unit(3), atol=1e-6)
    np.testing.assert_allclose(dirs.project(acts, 0, [4, 1]), feats[0, [4, 1]] @ dirs.unit(0))


def test_compare_ablations_table(five_layer_lm):
    model, tok = five_layer_lm
    dirs = refusal_directions(_labelled(model, tok))
    score = _last_along(model, tok, dirs.unit(4), 4)
    choices, table = compare_ablations(model, dirs, HARMFUL, HARMLESS, score)
    assert set(choices) == {"zero", "affine"} and _hook_count(model) == 0
    assert list(table.columns) == [
        "candidate",
        "‖r‖",
        "drop, zero ablation",
        "drop, affine ablation",
        "gain, addition (α=1)",
    ]
    affine = choices["affine"].table.set_index("layer")
    np.testing.assert_allclose(table["drop, affine ablation"], affine.ablation_drop.round(3))
    assert table["candidate"].tolist() == [True] * 4 + [False]


def test_intervention_runs_and_table(tiny_lm):
    model, tok = tiny_lm
    dirs = refusal_directions(_labelled(model, tok))
    seen = []

    def refusal_fn(m, prompts):
        # records the projection the model sees at layer 1, to tell the interventions apart
        a = capture_activations(m, tok, prompts, sites=["resid"], layers=[1], progress=False)
        seen.append(a.get("resid", 1) @ dirs.unit(1))
        users = [p if isinstance(p, str) else p.user for p in prompts]
        return pd.DataFrame(
            {
                "prompt": users,
                "response": [u.upper() for u in users],
                "refused": [i % 2 == 0 for i in range(len(users))],
                "first_token_refusal_prob": np.linspace(0, 1, len(users)),
            }
        )

    runs = intervention_runs(model, refusal_fn, HARMFUL, HARMLESS, dirs, 1)
    assert list(runs) == [
        "no intervention",
        "zero ablation (every layer)",
        "affine ablation (layer 1)",
    ]
    assert _hook_count(model) == 0
    np.testing.assert_allclose(seen[2], 0, atol=1e-4)  # zero ablation: nothing along r̂
    np.testing.assert_allclose(seen[4], dirs.reference(1), atol=1e-4)  # affine: the reference
    table = intervention_table(runs)
    assert table.loc["no intervention", "refusal rate, harmful"] == pytest.approx(2 / 3)
    assert table.loc["no intervention", "first-token P, benign"] == pytest.approx(0.5)
    examples = example_responses(runs, n=2, width=5)
    assert examples.index.tolist() == HARMFUL[:2]
    assert examples.iloc[0, 0] == HARMFUL[0].upper()[:5] and examples.shape == (2, 3)


def test_choose_alpha_takes_the_best_score(tiny_lm):
    model, tok = tiny_lm
    r = _random_direction()
    u = r / np.linalg.norm(r)
    alpha, grid = choose_alpha(
        model, r, 1, [-1.0, 2.0, 0.5], HARMLESS, _last_along(model, tok, u, 1)
    )
    assert alpha == 2.0 and grid.columns.tolist() == ["alpha", "score"]
    assert grid.score.iloc[1] - grid.score.iloc[2] == pytest.approx(
        1.5 * np.linalg.norm(r), rel=1e-3
    )
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="No alphas"):
        choose_alpha(model, r, 1, [], HARMLESS, _last_along(model, tok, u, 1))
