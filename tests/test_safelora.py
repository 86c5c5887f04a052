"""Safe LoRA: adapter glue, streamed alignment matrices, low-rank scores, projection."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import save_file

from safealign_lib.adapters.finetune import save_adapter
from safealign_lib.adapters.lora_io import (
    LoraFactors,
    load_lora_factors,
    lora_factors_from_state,
    read_adapter,
)
from safealign_lib.adapters.weights import (
    RowWorkers,
    SafetensorsWeights,
    alignment_matrix,
    iter_alignment_matrices,
)
from safealign_lib.methods.safelora import (
    Projector,
    compute_projections,
    lowrank_stats,
    project_adapter_dir,
    safelora_project,
    safelora_scores,
    select_modules,
)

QV = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")]


def _write_models(tmp_path, weights: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]):
    """base/ and chat/ folders with model.safetensors; chat = base + delta."""
    base, chat = tmp_path / "base", tmp_path / "chat"
    base.mkdir()
    chat.mkdir()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(base / "model.safetensors"))
    save_file(
        {k: (v + deltas.get(k, 0)).contiguous() for k, v in weights.items()},
        str(chat / "model.safetensors"),
    )
    return base, chat


@pytest.fixture()
def models_dir(tmp_path, lora_lm):
    """base/chat checkpoints of the tiny model: chat = base + a rank-3 change on q/v."""
    peft_model, _ = lora_lm
    weights = {
        k: v.detach().clone()
        for k, v in peft_model.base_model.model.state_dict().items()
        if "lora" not in k
    }
    weights = {k.replace(".base_layer", ""): v for k, v in weights.items()}
    gen = torch.Generator().manual_seed(2)
    deltas = {
        n: torch.randn(32, 3, generator=gen) @ torch.randn(3, 32, generator=gen) * 0.05 for n in QV
    }
    return _write_models(tmp_path, weights, deltas)


def _dense_c(v: torch.Tensor) -> torch.Tensor:
    v = v.double()
    return v @ v.T / torch.linalg.matrix_norm(v)


def _random_factors(d_out=24, d_in=16, r=3, scale=2.5, seed=0) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(
        A=torch.randn(r, d_in, generator=g), B=torch.randn(d_out, r, generator=g), scale=scale
    )


# --- adapter glue --------------------------------------------------------------------------------


def test_factors_from_live_model_and_from_saved_folder_agree(lora_lm, models_dir, tmp_path):
    peft_model, _ = lora_lm
    live = load_lora_factors(peft_model)
    saved = load_lora_factors(save_adapter(peft_model, tmp_path / "adapter"))
    assert sorted(live) == sorted(saved) == sorted(QV)
    assert set(QV) <= set(SafetensorsWeights(models_dir[0]).keys())  # keyed like the checkpoint
    for n in QV:
        torch.testing.assert_close(live[n].A, saved[n].A)
        torch.testing.assert_close(live[n].B, saved[n].B)
        assert live[n].scale == saved[n].scale == 8 / 4  # s = alpha / r
        assert live[n].shape == (32, 32) and live[n].r == 4


def test_scale_follows_rslora_and_alpha_pattern():
    state = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 8),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(8, 4),
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight": torch.randn(4, 8),
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight": torch.randn(8, 4),
    }
    plain = lora_factors_from_state({"r": 4, "lora_alpha": 16}, state)
    assert plain["model.layers.0.self_attn.q_proj.weight"].scale == 4.0
    rs = lora_factors_from_state({"r": 4, "lora_alpha": 16, "use_rslora": True}, state)
    assert rs["model.layers.0.self_attn.q_proj.weight"].scale == 16 / math.sqrt(4)
    pat = lora_factors_from_state({"r": 4, "lora_alpha": 16, "alpha_pattern": {"v_proj": 4}}, state)
    assert pat["model.layers.0.self_attn.v_proj.weight"].scale == 1.0
    assert pat["model.layers.0.self_attn.q_proj.weight"].scale == 4.0
    with pytest.raises(ValueError, match="config says r=8"):
        lora_factors_from_state({"r": 8, "lora_alpha": 16}, state)
    with pytest.raises(ValueError, match="DoRA"):
        lora_factors_from_state({"r": 4, "use_dora": True}, state)
    half = {k: v for k, v in state.items() if "q_proj.lora_B" not in k}
    with pytest.raises(ValueError, match="not both"):
        lora_factors_from_state({"r": 4}, half)


def test_bad_factors_and_missing_adapter_are_reported(tmp_path):
    with pytest.raises(ValueError, match="same r"):
        LoraFactors(A=torch.randn(4, 8), B=torch.randn(8, 3), scale=1.0)
    with pytest.raises(ValueError, match="NaN"):
        LoraFactors(A=torch.full((2, 3), float("nan")), B=torch.randn(3, 2), scale=1.0)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_lora_factors(tmp_path)


# --- low-rank algebra ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["approx", "exact"])
def test_lowrank_stats_equal_the_dense_computation(kind):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(24, 5, generator=g) @ torch.randn(5, 16, generator=g)  # rank 5
    f = _random_factors()
    proj = Projector.from_alignment(v, kind)
    stats = lowrank_stats(f.A, f.B, proj.apply(f.B), f.scale)
    if kind == "approx":
        c = _dense_c(v)
    else:
        u = torch.linalg.svd(v.double(), full_matrices=False)[0][:, :5]
        c = u @ u.T
    y = f.delta()
    x = c @ y
    assert stats["norm_update"] == pytest.approx(float(y.norm()), rel=1e-5)
    assert stats["norm_projected"] == pytest.approx(float(x.norm()), rel=1e-5)
    assert stats["inner"] == pytest.approx(float((x * y).sum()), rel=1e-5)
    assert stats["distance"] == pytest.approx(float((x - y).norm()), rel=1e-5)
    cos = float(torch.nn.functional.cosine_similarity(x.reshape(1, -1), y.reshape(1, -1)))
    assert stats["cosine"] == pytest.approx(cos, abs=1e-6)


def test_released_projector_rescales_but_the_exact_one_is_idempotent():
    g = torch.Generator().manual_seed(4)
    v = torch.randn(12, 2, generator=g) @ torch.randn(2, 12, generator=g)
    c = Projector.from_alignment(v, "approx").dense().double()
    torch.testing.assert_close(c, _dense_c(v), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(c @ c, c, atol=1e-3)
    eig = torch.linalg.eigvalsh(c)[-2:]
    sv = torch.linalg.svdvals(v.double())[:2]
    torch.testing.assert_close(
        eig.flip(0), sv**2 / torch.linalg.matrix_norm(v.double()), rtol=1e-4, atol=1e-6
    )
    p = Projector.from_alignment(v, "exact").dense().double()
    torch.testing.assert_close(p @ p, p, atol=1e-5, rtol=1e-5)
    assert float(torch.trace(p)) == pytest.approx(2.0, abs=1e-4)  # rank of V


def test_exact_projector_of_a_full_rank_square_alignment_is_the_identity():
    f = _random_factors(d_out=16, d_in=16)
    v = torch.randn(16, 16, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning, match="identity"):
        identity = Projector.from_alignment(v, "exact")
    stats = lowrank_stats(f.A, f.B, identity.apply(f.B), f.scale)
    assert stats["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert stats["distance"] < 1e-4 * stats["norm_update"]
    one = lowrank_stats(f.A, f.B, Projector.from_alignment(v, "exact", rank=1).apply(f.B), f.scale)
    assert one["cosine"] < 0.99


def test_zero_update_gives_nan_cosine_and_select_refuses_it():
    f = LoraFactors(A=torch.randn(2, 6), B=torch.zeros(6, 2), scale=1.0)
    stats = lowrank_stats(f.A, f.B, f.B, f.scale)
    assert math.isnan(stats["cosine"])
    with pytest.raises(ValueError, match="NaN"):
        select_modules({"a": stats["cosine"], "b": 0.3}, k=1)


# --- streaming from safetensors -------------------------------------------------------------------


class _CountingWeights(SafetensorsWeights):
    def __init__(self, path):
        super().__init__(path)
        self.loads: list[str] = []

    def get(self, name, dtype=torch.float32):
        self.loads.append(name)
        return super().get(name, dtype)


def test_projection_streams_each_tensor_once_and_matches_dense(lora_lm, models_dir):
    peft_model, _ = lora_lm
    base, chat = _CountingWeights(models_dir[0]), _CountingWeights(models_dir[1])
    factors = load_lora_factors(peft_model)
    proj = compute_projections(factors, base, chat)
    assert base.loads == chat.loads == list(factors)  # one tensor at a time, each once
    df = safelora_scores(proj)
    assert list(df.index) == QV and list(df["block"]) == [0, 0, 1, 1]
    assert list(df["module"]) == ["q_proj", "v_proj"] * 2
    for n in QV:
        v = alignment_matrix(models_dir[0], models_dir[1], n)
        y = factors[n].delta()
        x = _dense_c(v) @ y
        cos = float((x * y).sum() / (x.norm() * y.norm()))
        assert df.loc[n, "cosine"] == pytest.approx(cos, abs=1e-5)
        torch.testing.assert_close(
            proj[n].CB.double(), _dense_c(v) @ factors[n].B.double(), rtol=1e-4, atol=1e-6
        )


def test_sharded_checkpoint_with_index_reads_like_a_single_file(tmp_path):
    g = torch.Generator().manual_seed(6)
    w = {n: torch.randn(8, 8, generator=g) for n in QV}
    base, chat = _write_models(tmp_path, w, {n: torch.ones(8, 8) for n in QV})
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    index = {}
    for i, chunk in enumerate((QV[:2], QV[2:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: w[n] + 1 for n in chunk}, str(sharded / fname))
        index.update({n: fname for n in chunk})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": index})
    )
    for (n1, v1), (n2, v2) in zip(
        iter_alignment_matrices(base, chat, QV),
        iter_alignment_matrices(base, sharded, QV),
        strict=True,
    ):
        assert n1 == n2
        torch.testing.assert_close(v1, v2)
        torch.testing.assert_close(v1, torch.ones(8, 8))
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        SafetensorsWeights(sharded)


def test_checkpoint_errors_name_the_problem(tmp_path):
    g = torch.Generator().manual_seed(7)
    w = {n: torch.randn(8, 8, generator=g) for n in QV}
    base, chat = _write_models(tmp_path, w, {n: torch.randn(8, 8, generator=g) for n in QV})
    with pytest.raises(KeyError, match="layers.9.self_attn.q_proj.weight.*Closest"):
        alignment_matrix(base, chat, "model.layers.9.self_attn.q_proj.weight")
    with pytest.raises(ValueError, match="adapter expects"):
        alignment_matrix(base, chat, QV[0], expected_shape=(8, 16))
    (tmp_path / "odd").mkdir()
    save_file(
        {**{n: w[n] for n in QV[1:]}, QV[0]: torch.randn(8, 9)},
        str(tmp_path / "odd" / "model.safetensors"),
    )
    with pytest.raises(ValueError, match="base has shape"):
        alignment_matrix(base, tmp_path / "odd", QV[0])
    (tmp_path / "bad").mkdir()
    save_file(
        {**w, QV[1]: torch.full((8, 8), float("inf"))}, str(tmp_path / "bad" / "model.safetensors")
    )
    with pytest.raises(ValueError, match="v_proj.weight.*NaN or inf"):
        alignment_matrix(base, tmp_path / "bad", QV[1])
    with pytest.raises(
        ValueError, match="v_proj.weight.*NaN or inf"
    ):  # the path that never stores V
        compute_projections({QV[1]: _random_factors(8, 8)}, base, tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SafetensorsWeights(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="zero"):
        Projector.from_alignment(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="Unknown projector"):
        Projector.from_alignment(torch.ones(4, 4), "svd")


def test_row_workers_split_every_row_once_and_give_the_one_thread_result(tmp_path):
    from threadpoolctl import threadpool_info

    from safealign_lib.adapters.weights import _ROWS, difference_times, read_alignment

    g = torch.Generator().manual_seed(9)
    d_out, d_in = 1100, 1000  # above the parallel threshold; rows not a multiple of the block
    w = {QV[0]: torch.randn(d_out, d_in, generator=g)}
    base, chat = _write_models(tmp_path, w, {QV[0]: torch.randn(d_out, d_in, generator=g) * 1e-2})
    base, chat = SafetensorsWeights(base), SafetensorsWeights(chat)
    right = torch.randn(d_out, 8, generator=g)
    v64 = chat.get(QV[0], torch.float64) - base.get(QV[0], torch.float64)
    before = [i["num_threads"] for i in threadpool_info()]
    results = {}
    for n in (1, 2, 3):
        with RowWorkers(n) as workers:
            seen = []
            workers.map_rows(lambda lo, hi, seen=seen: seen.append((lo, hi)), d_out, d_out * d_in)
            assert sorted(seen)[0][0] == 0 and sorted(seen)[-1][1] == d_out
            assert all(a[1] == b[0] for a, b in zip(sorted(seen), sorted(seen)[1:], strict=False))
            assert len(seen) == min(n, -(-d_out // _ROWS))
            v, norm, rt_v = read_alignment(
                base, chat, QV[0], (d_out, d_in), right=right, workers=workers
            )
            cv = difference_times(rt_v.T, workers, v=v.numpy())
            c_t, b_t = chat.get(QV[0]), base.get(QV[0])
            torch.testing.assert_close(
                difference_times(rt_v.T, workers, c=c_t.numpy(), b=b_t.numpy()),
                cv,
                rtol=1e-5,
                atol=1e-5,
            )  # V formed again in cache
        results[n] = v, norm, rt_v, cv
        torch.testing.assert_close(v.double(), v64, rtol=0, atol=1e-6)
        assert norm == pytest.approx(float(v.double().norm()), rel=1e-7)
        torch.testing.assert_close(rt_v.double(), right.double().T @ v64, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            cv.double(), v64 @ (v64.T @ right.double()), rtol=1e-4, atol=1e-4
        )
    assert [i["num_threads"] for i in threadpool_info()] == before  # BLAS threads given back
    torch.testing.assert_close(results[2][0], results[1][0], rtol=0, atol=0)  # same V, bit for bit
    for n in (2, 3):
        torch.testing.assert_close(results[n][3], results[1][3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_threads"):
        RowWorkers(0)


def test_adapter_for_another_model_is_refused(tmp_path):
    g = torch.Generator().manual_seed(8)
    w = {n: torch.randn(8, 8, generator=g) for n in QV}
    base, chat = _write_models(tmp_path, w, {n: torch.randn(8, 8, generator=g) for n in QV})
    wrong = {QV[0]: _random_factors(d_out=8, d_in=16)}
    with pytest.raises(ValueError, match="belongs to another model"):
        compute_projections(wrong, base, chat)
    with pytest.raises(KeyError, match="not in"):
        compute_projections(
            {"model.layers.0.mlp.up_proj.weight": _random_factors(8, 8)}, base, chat
        )


# --- choosing and projecting ----------------------------------------------------------------------


def test_compute_projections_reads_an_adapter_folder_or_a_live_model(lora_lm, models_dir, tmp_path):
    peft_model, _ = lora_lm
    folder = save_adapter(peft_model, tmp_path / "adapter")
    from_factors = compute_projections(load_lora_factors(peft_model), *models_dir)
    for source in (folder, str(folder), peft_model):
        proj = compute_projections(source, *models_dir)
        assert list(proj) == list(from_factors)
        for n, p in proj.items():
            torch.testing.assert_close(p.CB, from_factors[n].CB)


def test_select_modules_number_and_threshold_modes():
    scores = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3}
    assert select_modules(scores, k=2) == ["b", "d"]
    assert select_modules(scores, k=2, side="high") == ["a", "c"]
    assert select_modules(scores, threshold=0.5) == ["b", "c", "d"]
    assert select_modules(scores, threshold=0.5, side="high") == ["a", "c"]
    assert select_modules(scores, k=0) == []
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        select_modules(scores, k=5)
    with pytest.raises(ValueError, match="not both"):
        select_modules(scores, k=1, threshold=0.2)
    with pytest.raises(ValueError, match="not both and not neither"):
        select_modules(scores)


def test_projection_in_place_and_through_an_adapter_folder_give_the_same_model(
    lora_lm, models_dir, tmp_path
):
    peft_model, tok = lora_lm
    adapter = save_adapter(peft_model, tmp_path / "adapter")
    factors = load_lora_factors(peft_model)
    proj = compute_projections(factors, *models_dir)
    names = select_modules(safelora_scores(proj)["cosine"], k=2)
    assert len(names) == 2
    before = {n: f.B.clone() for n, f in factors.items()}

    safelora_project(peft_model, proj, names)
    after = load_lora_factors(peft_model)
    for n in QV:
        expected = proj[n].CB if n in names else before[n]
        torch.testing.assert_close(after[n].B, expected)
        torch.testing.assert_close(after[n].A, factors[n].A)  # A is never touched

    out = project_adapter_dir(adapter, proj, names, tmp_path / "projected")
    base_model = peft_model.base_model.model
    ids = tok(["How do I bake bread?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        live_logits = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    assert not torch.allclose(live_logits, plain)  # the adapter does something
    _, state = read_adapter(out)
    key = f"base_model.model.{names[0].removesuffix('.weight')}.lora_B.weight"
    torch.testing.assert_close(state[key], proj[names[0]].CB)
    # reload the written folder on a fresh copy of the base weights: same outputs
    fresh = type(base_model)(base_model.config).eval()
    sd = {
        k.replace(".base_layer", ""): v
        for k, v in base_model.state_dict().items()
        if "lora" not in k
    }
    fresh.load_state_dict(sd)
    reloaded = PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, live_logits)


def test_projection_errors(lora_lm, models_dir):
    peft_model, _ = lora_lm
    proj = compute_projections(load_lora_factors(peft_model), *models_dir)
    with pytest.raises(KeyError, match="No projection"):
        safelora_project(peft_model, proj, ["model.layers.5.self_attn.q_proj.weight"])
    with pytest.raises(KeyError, match="lora_B"):
        safelora_project({"x": torch.zeros(1)}, proj, [QV[0]])
