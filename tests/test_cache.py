"""Cached measurements (course/cache.py): a hit reads, any change to the spec misses, and an
interrupted write never looks complete."""

import types

import pandas as pd
import pytest

from safealign_lib.course import cache


def _counting(tables):
    calls = []

    def compute():
        calls.append(1)
        return tables

    return compute, calls


def test_a_hit_reads_what_was_written_and_computes_once(tmp_path):
    folder = cache.folder_for("smoke", "kind", {"a": 1}, tmp_path)
    compute, calls = _counting((pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"y": [3.5]})))
    first = cache.cached_tables(folder, ("runs", "removal"), compute)
    again = cache.cached_tables(folder, ("runs", "removal"), compute)
    assert len(calls) == 1 and again[0].equals(first[0]) and list(again[1].y) == [3.5]


def test_every_change_to_the_spec_is_another_entry(tmp_path):
    base = {"adapters": ["k1", "k2"], "split": "test", "code": "abc"}
    changed = [
        {**base, "adapters": ["k1", "k3"]},  # another adapter (data, settings or weights)
        {**base, "split": "val"},
        {**base, "code": "abd"},  # the measuring code
    ]
    folders = {cache.folder_for("cpu", "kind", s, tmp_path) for s in [base, *changed]}
    assert len(folders) == 4
    assert cache.folder_for("cpu", "kind", dict(reversed(base.items())), tmp_path) in folders


def test_an_interrupted_entry_is_computed_again(tmp_path):
    folder = cache.folder_for("smoke", "kind", {"a": 2}, tmp_path)
    folder.mkdir(parents=True)
    (folder / "removal.csv").write_text("y\n1\n")  # the first name's file is written last
    compute, calls = _counting((pd.DataFrame({"x": [1]}), pd.DataFrame({"y": [2]})))
    runs, removal = cache.cached_tables(folder, ("runs", "removal"), compute)
    assert calls == [1] and list(removal.y) == [2]
    with pytest.raises(ValueError, match="gave 3 tables"):
        cache.cached_tables(tmp_path / "other", ("a", "b"), lambda: (pd.DataFrame(),) * 3)


def test_the_source_digest_follows_the_code():
    a = types.ModuleType("a")
    assert cache.source_digest(cache) == cache.source_digest(cache)
    with pytest.raises(TypeError):
        cache.source_digest(a)  # a module without source cannot key a cache


def test_a_package_digest_covers_every_module_in_it(tmp_path, monkeypatch):
    """``methods.salora`` is a package: a change to any of its files is a code change."""
    pkg = tmp_path / "pkg_digest_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from pkg_digest_demo.inner import f\n")
    (pkg / "inner.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import pkg_digest_demo

    before = cache.source_digest(pkg_digest_demo)
    (pkg / "inner.py").write_text("def f():\n    return 2\n")  # __init__.py unchanged
    assert cache.source_digest(pkg_digest_demo) != before
