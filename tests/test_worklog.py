"""The work log: off by default, one line per outermost timed call, summed per label and kind."""

from __future__ import annotations

import pytest

from safealign_lib import worklog


def test_off_without_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(worklog.ENV, raising=False)
    with worklog.record("training") as w:
        w["tokens"] += 5
    assert list(tmp_path.iterdir()) == []


def test_records_kind_tokens_and_label_once_for_nested_calls(monkeypatch, tmp_path):
    log = tmp_path / "01.jsonl"
    monkeypatch.setenv(worklog.ENV, str(log))
    monkeypatch.setenv(worklog.LABEL_ENV, "01")

    @worklog.timed("forward")
    def inner() -> int:
        return 3

    with worklog.record("generation") as w:
        w["tokens"] += 10
        assert inner() == 3  # inside generation: counted by the outer call only
    inner()
    table = worklog.read(log)
    assert list(table.kind) == ["generation", "forward"]
    assert list(table.tokens) == [10, 0] and set(table.label) == {"01"}
    assert set(table.role) == {"main"}
    sums = worklog.breakdown(table)
    assert sums.loc["01", "generation"] == table.seconds.iloc[0]
    assert sums.loc["01", "training"] == 0.0 and sums.loc["01", "processes"] == 1
    assert worklog.tokens(table).loc["01", "generation"] == 10


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="Unknown kind of work 'sleeping'"):
        with worklog.record("sleeping"):
            pass


def test_empty_log_gives_empty_tables(tmp_path):
    empty = worklog.read(tmp_path)
    assert empty.empty and worklog.breakdown(empty).empty and worklog.tokens(empty).empty
