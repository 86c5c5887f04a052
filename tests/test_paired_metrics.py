"""bench/paired_metrics.py: the paired before/after table an arithmetic change is judged by."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "paired_metrics", Path(__file__).parents[1] / "bench" / "paired_metrics.py"
)
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def test_moved_keys_smooth_first_identical_and_unpaired_counted():
    before = {
        "01": {"harmful_rate": 0.5, "first_token_refusal_prob_x": 0.25, "wall_s": 10.0, "v": "a"},
        "05": {"utility_y": 0.4, "only_before": 1.0, "ok": True},
        "_provenance": {"n": 3},
    }
    after = {
        "01": {"harmful_rate": 0.5, "first_token_refusal_prob_x": 0.25 + 1e-9, "wall_s": 9.0},
        "05": {"utility_y": 0.4, "only_after": 2.0},
        "_provenance": {"n": 4},
    }
    moved, same, unpaired = paired.compare(before, after)
    assert [k for k, _, _ in moved] == ["01/first_token_refusal_prob_x", "01/wall_s"]
    assert same == 2 and unpaired == 2  # strings, booleans and _provenance are not metrics
