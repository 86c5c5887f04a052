"""SPLoRA: E-DIEM scores (released vs the course's) and real pruning of LoRA modules."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from safealign_lib.adapters.finetune import save_adapter
from safealign_lib.adapters.lora_io import LoraFactors, load_lora_factors, read_adapter
from safealign_lib.methods.safelora import compute_projections
from safealign_lib.methods.splora import (
    ediem_comparison,
    prune_adapter,
    prune_adapter_dir,
    prune_peft_model,
    rank_correlations,
    released_number_selection,
    score_spreads,
    splora_scores,
    splora_select,
)

D, RANK_V, R = 32, 4, 2
NAMES = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(4) for m in ("q_proj", "v_proj")]
MISALIGNED = {"model.layers.1.self_attn.q_proj.weight", "model.layers.2.self_attn.v_proj.weight"}


@pytest.fixture()
def synthetic(tmp_path):
    """8 modules; chat - base = U_l (2 I) W_l^T with orthonormal U_l, W_l (rank 4), so the released
    C = V V^T / ||V||_F is exactly the projector U_l U_l^T. Aligned updates have B in span(U_l);
    the two MISALIGNED ones have B orthogonal to it. Entries of B A are ~1e-4, as after LoRA."""
    g = torch.Generator().manual_seed(0)
    base, chat, factors = {}, {}, {}
    for n in NAMES:
        u = torch.linalg.qr(torch.randn(D, RANK_V, generator=g))[0]
        w = torch.linalg.qr(torch.randn(D, RANK_V, generator=g))[0]
        base[n] = torch.randn(D, D, generator=g)
        chat[n] = base[n] + 2.0 * u @ w.T
        b = torch.randn(D, R, generator=g) * 1e-2
        b = b - u @ (u.T @ b) if n in MISALIGNED else u @ (u.T @ b) * 3
        factors[n] = LoraFactors(A=torch.randn(R, D, generator=g) * 1e-2, B=b, scale=2.0)
    for name, w in (("base", base), ("chat", chat)):
        (tmp_path / name).mkdir()
        save_file(w, str(tmp_path / name / "model.safetensors"))
    return factors, tmp_path / "base", tmp_path / "chat"


def test_empirical_ediem_separates_layers_and_finds_the_misaligned_ones(synthetic):
    factors, base, chat = synthetic
    proj = compute_projections(factors, base, chat, null_samples=64, seed=0)
    for null in ("layers", "rotation"):
        df = splora_scores(proj, null=null)
        assert set(splora_select(df, k=2)) == MISALIGNED, null
        top, rest = df.loc[list(MISALIGNED), "ediem"], df.drop(index=list(MISALIGNED))["ediem"]
        assert top.min() > rest.max() + 1.0
    # the cosine of Safe LoRA agrees: misaligned updates are orthogonal to their projection
    assert (df.loc[list(MISALIGNED), "cosine"].abs() < 1e-4).all()


def test_released_ediem_is_about_one_for_every_layer(synthetic):
    factors, base, chat = synthetic
    df = splora_scores(compute_projections(factors, base, chat), released=True)
    assert df["distance"].max() > 1e3 * df["distance"].min()  # the modules differ wildly ...
    assert df["ediem_released"].between(0.9, 1.1).all()  # ... the released score does not
    assert df["ediem_released"].max() - df["ediem_released"].min() < 0.2
    # the course's score ranks the misaligned modules first
    assert set(df["ediem"].nlargest(2).index) == MISALIGNED


def test_ediem_comparison_puts_every_variant_side_by_side(synthetic):
    factors, base, chat = synthetic
    proj = compute_projections(factors, base, chat, null_samples=16, seed=0)
    df = ediem_comparison(proj)
    pd.testing.assert_series_equal(df["ediem"], splora_scores(proj)["ediem"])
    pd.testing.assert_series_equal(
        df["ediem_rotation"], splora_scores(proj, null="rotation")["ediem"], check_names=False
    )
    assert df.loc[NAMES[3], "module_label"] == "L1 v"
    # in float64 the released score is 1 up to far smaller rounding than in float32
    assert (df.ediem_released_float64 - 1).abs().max() < 1e-3


def test_score_spreads_and_rank_correlations_per_adapter():
    scores = pd.DataFrame(
        {
            "condition": ["a"] * 3 + ["b"] * 3,
            "seed": 0,
            "cosine": [0.1, 0.2, 0.3, 0.3, 0.2, 0.1],
            "s": [1.0, 5.0, 2.0, 0.0, 1.0, 4.0],
        }
    )
    spreads = score_spreads(scores, ["s", "cosine"])
    assert spreads.loc[("a", 0), "s"] == 4.0 and spreads.loc[("b", 0), "cosine"] == pytest.approx(
        0.2
    )
    rho = rank_correlations(scores, ["s"])
    assert rho.loc[("a", 0), "s"] == pytest.approx(0.5) and rho.loc[("b", 0), "s"] == -1.0


def test_number_mode_prunes_exactly_k_while_the_released_rule_keeps_k_minus_one():
    scores = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3, "e": 0.7}
    assert splora_select(pd.Series(scores), k=2) == ["a", "e"]
    released = released_number_selection(scores, k=2)
    assert sorted(released) == ["b", "c", "d", "e"]  # prunes L - k + 1 = 4, keeps only "a"
    assert len(scores) - len(released) == 2 - 1
    with pytest.raises(ValueError, match=r"\[1, 5\]"):
        released_number_selection(scores, k=6)


def test_score_errors(synthetic):
    factors, base, chat = synthetic
    proj = compute_projections(factors, base, chat)
    with pytest.raises(ValueError, match="null_samples"):
        splora_scores(proj, null="rotation")
    with pytest.raises(ValueError, match="Unknown null"):
        splora_scores(proj, null="bootstrap")
    one = {NAMES[0]: proj[NAMES[0]], NAMES[1]: proj[NAMES[1]]}
    with pytest.raises(ValueError, match="alone"):
        splora_scores(one, group="module")
    # rtol 1e-12 keeps V's rounding noise as directions: a full-rank exact projector, the identity
    with pytest.warns(UserWarning, match="identity"):
        exact = compute_projections(
            {NAMES[0]: factors[NAMES[0]]}, base, chat, projector="exact", rtol=1e-12, null_samples=8
        )
    with pytest.raises(ValueError, match="zero spread"):
        splora_scores(exact, null="rotation")


# --- pruning --------------------------------------------------------------------------------------


PRUNE = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"]


def _fresh_base(peft_model):
    inner = peft_model.base_model.model
    fresh = type(inner)(inner.config).eval()
    fresh.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in inner.state_dict().items() if "lora" not in k}
    )
    return fresh


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_pruned_live_model_drops_modules_and_reloads_identically(lora_lm, tmp_path):
    peft_model, tok = lora_lm
    ids = tok(["Tell me how to grow tomatoes."], return_tensors="pt")["input_ids"]
    # reference: the same adapter with the pruned modules' B zeroed (released SPLoRA's way)
    zeroed = copy.deepcopy(peft_model)
    with torch.no_grad():
        for n in PRUNE:
            zeroed.base_model.model.get_submodule(n.removesuffix(".weight")).lora_B[
                "default"
            ].weight.zero_()
    full = _logits(peft_model, ids)

    prune_peft_model(peft_model, PRUNE)
    inner = peft_model.base_model.model
    for n in PRUNE:
        assert type(inner.get_submodule(n.removesuffix(".weight"))) is torch.nn.Linear
    kept = sorted(set(load_lora_factors(peft_model)))
    assert kept == [
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ]
    pruned = _logits(peft_model, ids)
    torch.testing.assert_close(pruned, _logits(zeroed, ids))
    assert not torch.allclose(pruned, full)

    out = save_adapter(peft_model, tmp_path / "pruned")
    config, state = read_adapter(out)
    assert sorted(config["target_modules"]) == [k.removesuffix(".weight") for k in kept]
    assert len(state) == 4  # lora_A and lora_B of the two kept modules
    reloaded = PeftModel.from_pretrained(_fresh_base(peft_model), str(out)).eval()
    torch.testing.assert_close(_logits(reloaded, ids), pruned)
    r_inner = reloaded.base_model.model
    for n in PRUNE:
        assert type(r_inner.get_submodule(n.removesuffix(".weight"))) is torch.nn.Linear
    assert sum(isinstance(m, LoraLayer) for m in r_inner.modules()) == 2


def test_pruning_an_adapter_folder_equals_pruning_the_live_model(lora_lm, tmp_path):
    peft_model, tok = lora_lm
    ids = tok(["Summarize the dialogue."], return_tensors="pt")["input_ids"]
    folder = save_adapter(peft_model, tmp_path / "adapter")
    out = prune_adapter_dir(folder, PRUNE, tmp_path / "pruned")
    reloaded = PeftModel.from_pretrained(_fresh_base(peft_model), str(out)).eval()
    prune_peft_model(peft_model, PRUNE)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(peft_model, ids))
    for n in PRUNE:
        assert (
            type(reloaded.base_model.model.get_submodule(n.removesuffix(".weight")))
            is torch.nn.Linear
        )


def test_pruning_errors(lora_lm):
    peft_model, _ = lora_lm
    with pytest.raises(KeyError, match="not LoRA modules"):
        prune_peft_model(peft_model, ["model.layers.0.mlp.up_proj.weight"])
    every = list(load_lora_factors(peft_model))
    with pytest.raises(ValueError, match="no adapter"):
        prune_peft_model(peft_model, every)
    state = {
        f"base_model.model.{n.removesuffix('.weight')}.lora_{w}.weight": torch.zeros(1)
        for n in every
        for w in "AB"
    }
    with pytest.raises(ValueError, match="no adapter"):
        prune_adapter({"target_modules": ["q_proj"]}, state, every)
    with pytest.raises(KeyError, match="not LoRA modules"):
        prune_adapter({}, state, ["model.layers.7.self_attn.q_proj"])
    cfg, kept = prune_adapter({"target_modules": ["q_proj", "v_proj"]}, state, every[:1])
    assert cfg["target_modules"] == sorted(n.removesuffix(".weight") for n in every[1:])
    assert len(kept) == 2 * (len(every) - 1)


def test_adapter_switch_projects_prunes_and_always_restores(lora_lm, tmp_path):
    from safealign_lib.methods.splora import AdapterSwitch

    model, _ = lora_lm
    factors = load_lora_factors(model)
    g = torch.Generator().manual_seed(0)
    chat = {n: torch.randn(f.shape, generator=g) for n, f in factors.items()}
    base = {n: w - 0.1 * torch.randn(w.shape, generator=g) for n, w in chat.items()}
    for name, w in (("base", base), ("chat", chat)):
        (tmp_path / name).mkdir()
        save_file(w, str(tmp_path / name / "model.safetensors"))
    proj = compute_projections(factors, tmp_path / "base", tmp_path / "chat")
    switch = AdapterSwitch(model, proj)

    def lora_b():
        return {n: m.lora_B["default"].weight.detach().clone() for n, m in switch.modules.items()}

    trained, (first, second) = lora_b(), list(factors)[:2]
    m1, m2 = first.removesuffix(".weight"), second.removesuffix(".weight")
    switch.apply("SPLoRA", [first])
    now = lora_b()
    assert now[m1].abs().sum() == 0 and torch.equal(now[m2], trained[m2])
    switch.apply("Safe LoRA", [second])  # the pruned module comes back first
    now = lora_b()
    assert torch.equal(now[m1], trained[m1])
    torch.testing.assert_close(now[m2], proj[second].CB)
    switch.apply()
    assert all(torch.equal(v, trained[n]) for n, v in lora_b().items())
    with pytest.raises(ValueError, match="Unknown method"):
        switch.apply("prune", [first])
    with pytest.raises(KeyError, match="No LoRA module"):
        switch.apply("SPLoRA", ["model.layers.9.mlp.up_proj.weight"])
