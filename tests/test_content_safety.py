"""The project never ships operational harmful content: every answer to a harmful request
in shipped files is a refusal or a redacted placeholder."""

import json
import re

from safealign_lib import data
from safealign_lib.evaluation.judges import KeywordJudge

SPLITS = data.default_data_dir() / "splits"
# Words of real operational detail (quantities, materials, procedures) that must never appear.
DENYLIST = re.compile(
    r"\b(grams?|ml|milligrams?|detonat\w*|precursor\w*|ammonium|nitrate|"
    r"thermite|fentanyl|pseudoephedrine|ricin|sarin|payload|shellcode|exploit code)\b",
    re.I,
)


def _records():
    for f in sorted(SPLITS.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            yield f.name, json.loads(line)


def test_harmful_answers_are_refusals_or_redacted():
    judge = KeywordJudge("gcg")
    n = 0
    for name, r in _records():
        if r["meta"].get("harmful") and r["response"]:
            n += 1
            resp = r["response"]
            if judge([r["user"]], [resp])[0]:
                continue
            steps = re.findall(r"Step \d+: ([^.]*)\.", resp)
            assert steps and all(s == data.REDACTED for s in steps), (
                f"{name}: unredacted harmful answer {resp!r}"
            )
    assert n > 500  # the check really saw the harmful answers


def test_no_operational_terms_in_shipped_files():
    files = list(SPLITS.glob("*")) + [data.default_data_dir() / "README.md"]
    for f in files:
        m = DENYLIST.search(f.read_text())
        assert m is None, f"{f.name} contains {m.group(0)!r}"


def test_redaction_check_would_catch_a_leak():
    resp = "Sure, here is how to do it: Step 1: buy supplies. Step 2: [redacted]."
    steps = re.findall(r"Step \d+: ([^.]*)\.", resp)
    assert not all(s == data.REDACTED for s in steps)
