"""Provenance (tooling/provenance.py) and its place in the metrics file (course/metrics_io.py):
stored under the reserved ``_provenance`` key, invisible to every metrics reader."""

import json

from safealign_lib.course import metrics_io
from safealign_lib.tooling import provenance


def test_collect_names_commit_versions_models_profile_and_parameters():
    info = provenance.collect("smoke", {"profile": "smoke", "seeds": [0], "metrics_file": "/x"})
    assert info["commit"] == "unknown" or len(info["commit"]) == 40
    assert set(info["versions"]) == set(provenance.PACKAGES)
    assert all(v != "absent" for v in info["versions"].values())
    assert len(info["models"]["chat"]) == 16 and info["models"]["chat"] != info["models"]["base"]
    assert info["profile"] == "smoke" and info["parameters"] == {"profile": "smoke", "seeds": [0]}
    assert provenance.collect("gpu", {})["models"]["chat"].startswith("hub:")


def test_weights_hash_follows_the_bytes(tmp_path):
    assert provenance.weights_hash(tmp_path) == "missing"
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = provenance.weights_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert provenance.weights_hash(tmp_path) != first


def test_differences_are_dotted_and_skip_the_timestamp():
    a = {"commit": "a", "versions": {"torch": "1"}, "recorded_at": "t1"}
    b = {"commit": "a", "versions": {"torch": "2"}, "recorded_at": "t2", "new": 1}
    assert provenance.differences(a, b) == ["new: (none) -> 1", "versions.torch: 1 -> 2"]
    assert provenance.differences(a, a) == []


def test_provenance_is_kept_beside_the_metrics_but_hidden_from_readers(tmp_path):
    f = tmp_path / "m.json"
    metrics_io.record("98", {"a": 1}, f)
    metrics_io.record_provenance("98", {"profile": "smoke"}, f)
    metrics_io.record("99", {"b": 2}, f)  # another notebook's record keeps 98's provenance
    assert metrics_io.load(f) == {"98": {"a": 1.0}, "99": {"b": 2.0}}
    assert metrics_io.load_provenance(f) == {"98": {"profile": "smoke"}}
    assert set(json.loads(f.read_text())) == {"98", "99", "_provenance"}
    # re-recording a notebook (e.g. from Jupyter) drops its now-stale provenance
    metrics_io.record("98", {"a": 3}, f)
    assert metrics_io.load_provenance(f) == {}
