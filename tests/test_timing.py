"""Interleaved latency timing: rotation, warm-up, robust summaries."""

from __future__ import annotations

import pytest
import torch

from safealign_lib.evaluation import timing


def test_rotated_moves_the_start_by_one_place_per_round():
    names = ["a", "b", "c"]
    assert [timing.rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_interleaved_times_warms_up_then_rotates_the_order():
    order = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = timing.interleaved_times(calls, repeats=3, warmup=1)
    assert order == list("abc") + list("abc") + list("bca") + list("cab")
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for ts in times.values() for t in ts)
    with pytest.raises(ValueError, match="repeats"):
        timing.interleaved_times(calls, repeats=0)


def test_timing_table_medians_minima_iqr_and_ratios():
    times = {"full": [1.0, 2.0, 3.0, 4.0, 100.0], "half": [0.5, 1.0, 1.5, 2.0, 0.25]}
    t = timing.timing_table(times, reference="full", label="full LoRA")
    assert t.loc["full", "median s"] == 3.0 and t.loc["full", "min s"] == 1.0
    assert t.loc["full", "IQR s"] == pytest.approx(2.0)  # the outlier does not move it
    assert t.loc["half", "median vs full LoRA"] == pytest.approx(1.0 / 3.0)
    assert t.loc["half", "min vs full LoRA"] == pytest.approx(0.25)
    assert list(timing.timing_table(times).columns) == ["median s", "min s", "IQR s"]


def test_generate_call_generates_exactly_the_new_tokens(tiny_lm):
    model, tok = tiny_lm
    inputs = {"input_ids": torch.tensor([[1, 5, 7]]), "attention_mask": torch.ones(1, 3, dtype=int)}
    out = timing.generate_call(model, inputs, new_tokens=4, pad_token_id=tok.pad_token_id)()
    assert out.shape == (1, 3 + 4)
