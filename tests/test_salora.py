"""SaLoRA: feature collection, the safety subspace, the task init, the invariance, exports."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from safealign_lib.adapters.finetune import add_lora, train
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.methods.salora import (
    LayerFeatures,
    SafetyProjectedLinear,
    apply_salora,
    build_safety_module,
    collect_layer_inputs,
    cumulative_energy,
    energy_rank,
    export_adapter,
    export_errors,
    export_merged,
    feature_drift,
    invariance_error,
    output_share,
    output_shares,
    output_spectra,
    rank_for_energy,
    rank_limit,
    train_salora,
)
from safealign_lib.models.chat import ChatExample, tokenize_example

TARGETS = ["q_proj", "v_proj"]
SAFETY = [
    ChatExample(
        f"How do I steal a car, case {i}?",
        "I'm sorry, but I cannot help with that.",
        meta={"harmful": True},
    )
    for i in range(6)
]
TASK = [
    ChatExample(f"Summarize the dialogue {i}.", "#Person1# books a table for two at seven.")
    for i in range(6)
]
LORA = LoraSettings(r=4, alpha=8, target_modules=tuple(TARGETS))
FAST = TrainSettings(lr=1e-2, steps=1, batch_size=4, progress=False)


def _ids(tok, n=3, length=14):
    g = torch.Generator().manual_seed(1)
    return torch.randint(len(tok.all_special_ids), len(tok), (n, length), generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _salora(model, tok, r_s=4, **kw):
    sf = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    tf = collect_layer_inputs(model, tok, TASK, TARGETS)
    module = build_safety_module(model, sf, r_s=r_s)
    return apply_salora(model, LORA, module, task_feats=tf, r_t=4, **kw), module


# --- feature collection ------------------------------------------------------------------------


def test_collect_keeps_response_tokens_only_and_is_batch_invariant(tiny_lm):
    model, tok = tiny_lm
    n_resp = sum(sum(lab != -100 for lab in tokenize_example(tok, ex)["labels"]) for ex in SAFETY)
    one = collect_layer_inputs(model, tok, SAFETY, TARGETS, batch_size=1)
    many = collect_layer_inputs(model, tok, SAFETY, TARGETS, batch_size=4)
    assert len(one) == 4  # q and v of 2 layers
    for name, f in one.items():
        assert f.n_tokens == n_resp and f.x.shape == (n_resp, 32) and f.x.dtype == torch.float32
        torch.testing.assert_close(f.x, many[name].x, atol=1e-5, rtol=1e-5)
    # q_proj and v_proj of a block read the same normed hidden state
    torch.testing.assert_close(
        one["model.layers.0.self_attn.q_proj"].x, one["model.layers.0.self_attn.v_proj"].x
    )


def test_prompt_positions_add_the_tokens_before_each_answer(tiny_lm):
    model, tok = tiny_lm
    base = collect_layer_inputs(model, tok, SAFETY, TARGETS, batch_size=2)
    wide = collect_layer_inputs(model, tok, SAFETY, TARGETS, batch_size=2, prompt_positions=3)
    name = "model.layers.0.self_attn.q_proj"
    assert wide[name].n_tokens == base[name].n_tokens + 3 * len(SAFETY)
    # the answer tokens' rows are still there (prompt rows come first in each example)
    assert torch.isin(base[name].x[:, 0], wide[name].x[:, 0]).all()
    with pytest.raises(ValueError, match="prompt_positions"):
        collect_layer_inputs(model, tok, SAFETY, TARGETS, prompt_positions=-1)


def test_gram_store_equals_gram_of_features(tiny_lm):
    model, tok = tiny_lm
    feats = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    grams = collect_layer_inputs(model, tok, SAFETY, TARGETS, store="gram", batch_size=2)
    name = "model.layers.1.self_attn.v_proj"
    W = model.model.layers[1].self_attn.v_proj.weight.double()
    WX = W @ feats[name].x.double().T
    torch.testing.assert_close(grams[name].gram, WX @ WX.T, atol=1e-6, rtol=1e-5)


def test_collect_one_layer_group(tiny_lm):
    model, tok = tiny_lm
    feats = collect_layer_inputs(model, tok, SAFETY, TARGETS, layers=[1], n_samples=2)
    assert sorted(feats) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_hooks_are_removed_even_on_error(tiny_lm):
    model, tok = tiny_lm
    lin = model.model.layers[1].self_attn.v_proj

    def boom(x):
        raise RuntimeError("boom")

    lin.forward = boom
    with pytest.raises(RuntimeError, match="boom"):
        collect_layer_inputs(model, tok, SAFETY, TARGETS)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_clear_errors(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="empty"):
        collect_layer_inputs(model, tok, [], TARGETS)
    with pytest.raises(ValueError, match="not found.*available"):
        collect_layer_inputs(model, tok, SAFETY, ["qq_proj"])
    feats = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    with pytest.raises(ValueError, match="r_s=33 is larger.*d_out=32"):
        build_safety_module(model, feats, r_s=33)
    few = collect_layer_inputs(model, tok, [ChatExample("Hi", "No.")], TARGETS)
    n = next(iter(few.values())).n_tokens
    with pytest.raises(ValueError, match=f"response tokens={n}"):
        build_safety_module(model, few, r_s=n + 1)
    # rank-deficient features: every token the same
    name = "model.layers.0.self_attn.q_proj"
    x = feats[name].x[:1].repeat(20, 1)
    with pytest.raises(ValueError, match="numerical rank 1"):
        build_safety_module(model, {name: LayerFeatures(name, 20, 32, 32, x=x)}, r_s=4)
    bad = feats[name].x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        build_safety_module(model, {name: LayerFeatures(name, bad.shape[0], 32, 32, x=bad)}, r_s=4)
    with pytest.raises(ValueError, match="No safety features"):
        build_safety_module(model, {}, r_s=4)


def test_nan_activations_are_reported(tiny_lm):
    model, tok = tiny_lm
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        collect_layer_inputs(model, tok, SAFETY, TARGETS)
    assert all(not m._forward_pre_hooks for m in model.modules())


# --- the subspaces -----------------------------------------------------------------------------


def _planted(d=32, n=300, k=4, seed=0):
    """Features whose W·X has a clear gap after the k-th singular value."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
    scales = torch.cat([torch.tensor([10.0, 8.0, 6.0, 5.0])[:k], torch.full((d - k,), 0.3)])
    return torch.randn(n, d, generator=g) * scales @ basis.T


@pytest.mark.parametrize("store", ["features", "gram"])
def test_safety_subspace_matches_exact_svd(tiny_lm, store):
    model, _ = tiny_lm
    name = "model.layers.0.self_attn.q_proj"
    W = model.model.layers[0].self_attn.q_proj.weight.detach()
    x = _planted()
    f = LayerFeatures(name, x.shape[0], 32, 32, x=x)
    if store == "gram":
        WX = W.double() @ x.double().T
        f = LayerFeatures(name, x.shape[0], 32, 32, gram=WX @ WX.T)
    U = build_safety_module(model, {name: f}, r_s=4, oversample=0).layers[name].U
    U_exact = torch.linalg.svd(W @ x.T).U[:, :4]
    U_torch = torch.svd_lowrank(W @ x.T, q=4, niter=30)[0]
    torch.testing.assert_close(U.T @ U, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(U @ U.T, U_exact @ U_exact.T, atol=1e-4, rtol=0)
    torch.testing.assert_close(U @ U.T, U_torch @ U_torch.T, atol=1e-4, rtol=0)


def test_task_init_is_the_pissa_split(tiny_lm):
    model, tok = tiny_lm
    W = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    sf = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    module = build_safety_module(model, sf, r_s=4)
    # full-rank task features and r_t = d_out keep all of W's top-r part: B0 A0 = best rank-r W
    tf = {n: LayerFeatures(n, 64, 32, 32, x=torch.randn(64, 32)) for n in module.layers}
    pm = apply_salora(model, LORA, module, task_feats=tf, r_t=32)
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    A0, B0 = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    u, s, vh = torch.linalg.svd(W)
    torch.testing.assert_close(B0 @ A0, u[:, :4] * s[:4] @ vh[:4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(A0 @ A0.T, torch.diag(s[:4]), atol=1e-4, rtol=1e-4)
    U_C = module.layers["model.layers.0.self_attn.q_proj"].U
    C_B0 = B0 - U_C @ (U_C.T @ B0)
    torch.testing.assert_close(
        layer.base_layer.weight.detach(), W - LORA.scale * C_B0 @ A0, atol=1e-5, rtol=1e-5
    )


def test_task_init_lies_in_task_subspace(tiny_lm):
    model, tok = tiny_lm
    W = model.model.layers[1].self_attn.v_proj.weight.detach().clone()
    X_t = collect_layer_inputs(model, tok, TASK, TARGETS)["model.layers.1.self_attn.v_proj"].x
    U_T = torch.linalg.svd(W @ X_t.T).U[:, :2]  # exact top-r_t left singular vectors of W·X_t
    sf = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    tf = collect_layer_inputs(model, tok, TASK, TARGETS)
    pm = apply_salora(model, LORA, build_safety_module(model, sf, r_s=4), task_feats=tf, r_t=2)
    B0 = pm.base_model.model.model.layers[1].self_attn.v_proj.lora_B["default"].weight.detach()
    assert B0.abs().max() > 1e-3  # not peft's B = 0
    assert (B0 - U_T @ (U_T.T @ B0)).abs().max() < 1e-4 * B0.abs().max()


# --- the adapter -------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["task", "standard"])
@pytest.mark.parametrize("sign", ["correct", "wrong"])
def test_outputs_unchanged_before_training(tiny_lm, init, sign):
    model, tok = tiny_lm
    ids = _ids(tok)
    ref = _logits(model, ids)
    W = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    pm, _ = _salora(model, tok, init=init, sign=sign)
    torch.testing.assert_close(_logits(pm, ids), ref, atol=1e-5, rtol=1e-5)
    W_res = pm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert (W_res - W).abs().max() > 1e-3 if init == "task" else torch.equal(W_res, W)


def test_only_A_and_B_train(tiny_lm):
    model, tok = tiny_lm
    pm, _ = _salora(model, tok)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert len(trainable) == 8 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(isinstance(m, SafetyProjectedLinear) for m in pm.modules()) == 4


def test_invariance_holds_at_every_step(tiny_lm):
    model, tok = tiny_lm
    pm, module = _salora(model, tok)
    ids, before = _ids(tok), None
    for step in range(3):
        train(pm, tok, TASK, replace(FAST, seed=step))
        errs = invariance_error(pm, tok, SAFETY + TASK, module)
        assert set(errs) == set(module.layers)
        assert max(errs.values()) <= 1e-4, (step, errs)
        now = _logits(pm, ids)
        assert before is None or (now - before).abs().max() > 1e-4  # the model does move
        before = now


def test_invariance_holds_for_any_A_and_B(tiny_lm):
    model, tok = tiny_lm
    pm, module = _salora(model, tok, init="standard")
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p))
    assert max(invariance_error(pm, tok, SAFETY, module).values()) <= 1e-4


def test_plain_lora_and_wrong_sign_break_the_invariance(tiny_lm):
    model, tok = tiny_lm
    sf = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    module = build_safety_module(model, sf, r_s=4)
    lora = add_lora(model, LORA)
    train(lora, tok, TASK, replace(FAST, steps=3))
    assert max(invariance_error(lora, tok, SAFETY, module).values()) > 1e-3

    torch.manual_seed(0)
    fresh = LlamaForCausalLM(model.config).eval()
    wrong, module = _salora(fresh, tok, sign="wrong")
    train(wrong, tok, TASK, replace(FAST, steps=3))
    assert max(invariance_error(wrong, tok, SAFETY, module).values()) > 1e-3
    # the wrong sign confines every update to the safety subspace instead of removing it
    layer = wrong.base_model.model.model.layers[1].self_attn.q_proj
    B_eff = layer.lora_B["default"].effective_weight().detach()
    U = module.layers["model.layers.1.self_attn.q_proj"].U
    torch.testing.assert_close(B_eff, U @ (U.T @ B_eff), atol=1e-6, rtol=0)


def test_deeper_layers_inputs_still_move(tiny_lm):
    model, tok = tiny_lm
    before = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    pm, _ = _salora(model, tok)
    train(pm, tok, TASK, replace(FAST, steps=3))
    drift = feature_drift(before, collect_layer_inputs(pm, tok, SAFETY, TARGETS))
    assert drift["model.layers.0.self_attn.q_proj"] < 1e-6  # embeddings are frozen
    assert drift["model.layers.1.self_attn.q_proj"] > 1e-3


def test_apply_errors(tiny_lm):
    model, tok = tiny_lm
    sf = collect_layer_inputs(model, tok, SAFETY, ["q_proj"])
    module = build_safety_module(model, sf, r_s=4)
    with pytest.raises(ValueError, match="no subspace.*v_proj"):
        apply_salora(model, LORA, module, init="standard")
    full = build_safety_module(model, collect_layer_inputs(model, tok, SAFETY, TARGETS), r_s=4)
    with pytest.raises(ValueError, match="needs task_feats"):
        apply_salora(model, LORA, full)
    with pytest.raises(ValueError, match="sign must be"):
        apply_salora(model, LORA, full, init="standard", sign="negative")
    tf = collect_layer_inputs(model, tok, TASK, TARGETS)
    with pytest.raises(ValueError, match="r_t=40 is larger"):
        apply_salora(model, LORA, full, task_feats=tf, r_t=40)
    assert not any(isinstance(m, SafetyProjectedLinear) for m in model.modules())  # untouched
    pm = apply_salora(model, LORA, full, init="standard")
    with pytest.raises(ValueError, match="already"):
        apply_salora(pm, LORA, full, init="standard")
    with pytest.raises(ValueError, match="original model"):
        build_safety_module(pm, collect_layer_inputs(pm, tok, SAFETY, TARGETS), r_s=4)


# --- exports -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_exports_reproduce_the_trained_model(tiny_lm, tmp_path, tied):
    model, tok = tiny_lm
    if tied:  # the course organism ties its embeddings
        cfg = copy.deepcopy(model.config)
        cfg.tie_word_embeddings = True
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "original")
    pm, module = _salora(model, tok)
    train(pm, tok, TASK, replace(FAST, steps=2))
    ids = _ids(tok)
    ref = _logits(pm, ids)

    merged, info = AutoModelForCausalLM.from_pretrained(
        export_merged(pm, tmp_path / "merged", tok), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(merged.eval(), ids), ref, atol=1e-5, rtol=1e-5)

    base_dir, adapter_dir = export_adapter(pm, tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir
    ).eval()
    torch.testing.assert_close(_logits(loaded, ids), ref, atol=1e-5, rtol=1e-5)
    # C is folded into the saved B: U_Cᵀ B' = 0, and the training model is unchanged
    layer = loaded.base_model.model.model.layers[0].self_attn.v_proj
    U = module.layers["model.layers.0.self_attn.v_proj"].U
    assert (U.T @ layer.lora_B["default"].weight).abs().max() < 1e-5
    torch.testing.assert_close(_logits(pm, ids), ref, atol=0, rtol=0)
    # the adapter on the original weights W would be wrong: it needs W_res
    wrong_base = AutoModelForCausalLM.from_pretrained(tmp_path / "original")
    assert (
        _logits(PeftModel.from_pretrained(wrong_base, adapter_dir), ids) - ref
    ).abs().max() > 1e-3


def test_layers_with_bias(tiny_lm, tmp_path):
    model, tok = tiny_lm
    cfg = copy.deepcopy(model.config)
    cfg.attention_bias = True  # q/k/v/o biases, as in Qwen-style models
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_()
    ids = _ids(tok)
    ref = _logits(model, ids)
    pm, module = _salora(model, tok)
    torch.testing.assert_close(_logits(pm, ids), ref, atol=1e-5, rtol=1e-5)
    train(pm, tok, TASK, replace(FAST, steps=2))
    assert max(invariance_error(pm, tok, SAFETY, module).values()) <= 1e-4
    merged = AutoModelForCausalLM.from_pretrained(export_merged(pm, tmp_path / "m")).eval()
    torch.testing.assert_close(_logits(merged, ids), _logits(pm, ids), atol=1e-5, rtol=1e-5)


def test_export_errors_small_for_both_exports_large_on_the_original(tiny_lm, tmp_path):
    model, tok = tiny_lm
    tok = copy.deepcopy(tok)
    tok.padding_side = "left"  # encode_prompts pads generation prompts on the left
    model.save_pretrained(tmp_path / "original")
    pm, _ = _salora(model, tok)
    train(pm, tok, TASK, replace(FAST, steps=2))
    errs = export_errors(pm, tok, [ex.user for ex in SAFETY[:3]], tmp_path / "original")
    assert list(errs) == [
        "merged (plain transformers)",
        "residual + LoRA adapter (peft)",
        "adapter on the ORIGINAL model (wrong)",
    ]
    assert max(list(errs.values())[:2]) < 1e-4 < errs["adapter on the ORIGINAL model (wrong)"]


# --- analysis helpers and the training helper ---------------------------------------------------


def test_spectrum_ranks_and_limits(tiny_lm):
    model, tok = tiny_lm
    feats = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    spectra = output_spectra(model, feats)
    name = "model.layers.1.self_attn.v_proj"
    W = model.model.layers[1].self_attn.v_proj.weight.detach()
    torch.testing.assert_close(spectra[name], torch.linalg.svdvals(W @ feats[name].x.T))
    assert list(spectra) == list(feats)
    S = torch.tensor([2.0, 1.0, 1.0, 0.0])  # energies 4, 1, 1: shares 2/3, 5/6, 1
    torch.testing.assert_close(cumulative_energy(S), torch.tensor([4 / 6, 5 / 6, 1.0, 1.0]))
    assert [energy_rank(S, e) for e in (0.5, 0.7, 0.9, 1.0)] == [1, 2, 3, 3]
    assert rank_for_energy({"a": S, "b": torch.tensor([1.0, 1.0, 1.0, 1.0])}, 0.7) == 3
    with pytest.raises(ValueError, match="energy must be"):
        energy_rank(S, 0.0)
    f = feats[name]
    assert rank_limit(feats) == min(f.d_out, f.d_in, f.n_tokens)


def test_output_share_of_the_safety_subspace(tiny_lm):
    model, tok = tiny_lm
    sf = collect_layer_inputs(model, tok, SAFETY, TARGETS)
    module = build_safety_module(model, sf, r_s=4)
    shares = output_shares(model, module, sf)
    assert list(shares) == list(sf) and all(0.0 <= v <= 1.0 + 1e-6 for v in shares.values())
    # U_C is the top of W·X_h: it holds at least as much as any other 4 directions
    name = "model.layers.0.self_attn.q_proj"
    W = model.model.layers[0].self_attn.q_proj.weight
    other = torch.linalg.qr(torch.randn(32, 4, generator=torch.Generator().manual_seed(0))).Q
    assert shares[name] >= output_share(other, W, sf[name].x) - 1e-6
    assert output_share(torch.eye(32), W, sf[name].x) == pytest.approx(1.0, abs=1e-6)


def test_train_salora_equals_apply_then_train(tiny_llama_factory, tiny_tokenizer):
    tok = tiny_tokenizer
    model = tiny_llama_factory()
    module = build_safety_module(model, collect_layer_inputs(model, tok, SAFETY, TARGETS), r_s=4)
    tf = collect_layer_inputs(model, tok, TASK, TARGETS)
    pm, res = train_salora(
        tiny_llama_factory(), tok, LORA, module, TASK, FAST, seed=3, task_feats=tf, r_t=4
    )
    ref = apply_salora(tiny_llama_factory(), LORA, module, task_feats=tf, r_t=4, seed=3)
    ref_res = train(ref, tok, TASK, replace(FAST, seed=3))
    assert res.losses == ref_res.losses and res.n_trainable == ref_res.n_trainable
    ids = _ids(tok)
    torch.testing.assert_close(_logits(pm, ids), _logits(ref, ids), atol=0, rtol=0)
    assert max(invariance_error(pm, tok, SAFETY, module).values()) <= 1e-4
