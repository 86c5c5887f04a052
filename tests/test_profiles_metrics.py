import json
import math

import pytest

from safealign_lib.course import metrics_io, profiles


def test_profiles_resolve_and_validate():
    assert profiles.validate(profiles.get_profile("cpu")) == []
    gpu = profiles.get_profile("gpu")
    assert gpu.network and gpu.device == "cuda" and gpu.dtype == "float16"
    assert profiles.validate(gpu) == []
    bad = gpu.with_overrides(device="cpu", chat_model="/abs/path")
    assert len(profiles.validate(bad)) == 2
    assert profiles.get_profile("cpu", seeds=[4, 5]).seeds == (4, 5)
    with pytest.raises(ValueError, match="Unknown profile"):
        profiles.get_profile("tpu")
    with pytest.raises(ValueError, match="Unknown profile field"):
        profiles.get_profile("cpu", sedes=[1])


def test_missing_organism_is_reported(tmp_path):
    p = profiles.get_profile("cpu", chat_model=str(tmp_path / "x"))
    assert any("organism build" in m for m in profiles.validate(p))


def test_metrics_record_merges_and_validates(tmp_path):
    f = tmp_path / "m.json"
    metrics_io.record("99", {"a": 1, "b": 0.5}, f)
    metrics_io.record("98", {"c": 2}, f)
    assert json.loads(f.read_text()) == {"98": {"c": 2.0}, "99": {"a": 1.0, "b": 0.5}}
    with pytest.raises(ValueError, match="finite"):
        metrics_io.record("99", {"a": math.nan}, f)
    with pytest.raises(TypeError, match="not a number"):
        metrics_io.record("99", {"a": "x"}, f)
    with pytest.raises(KeyError, match="wall_s"):
        metrics_io.record("00", {"chat_utility": 0.1}, f)
    assert metrics_io.load(f)["99"] == {"a": 1.0, "b": 0.5}  # failed writes left the file intact
