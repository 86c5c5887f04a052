"""The notebook contract: keys are only removed with a changelog entry, checks can fail, and
timing keys are recognised."""

import json
from pathlib import Path

from safealign_lib.course import contract
from safealign_lib.tooling import runner

KEYS_FILE = Path(__file__).with_name("metric_keys.json")


def test_every_notebook_has_a_contract_and_every_contract_a_notebook():
    assert sorted(contract.CONTRACTS) == [p.name[:2] for p in runner.list_notebooks()]
    for number, c in contract.CONTRACTS.items():
        assert c.number == number
        assert set(c.headlines) <= set(c.required), number
        assert "wall_s" in c.required


def test_no_required_key_disappears_without_a_changelog_entry():
    committed = json.loads(KEYS_FILE.read_text())
    logged = {(e["notebook"], e["key"]) for e in contract.KEY_CHANGELOG}
    gone = [
        (n, k)
        for n, keys in committed.items()
        for k in keys
        if k not in contract.REQUIRED_ORGANISM.get(n, ()) and (n, k) not in logged
    ]
    assert not gone, f"required metric keys removed without a KEY_CHANGELOG entry: {gone}"
    for e in contract.KEY_CHANGELOG:
        assert {"notebook", "key", "change", "why"} <= set(e)


def test_checks_fail_on_wrong_numbers_and_on_missing_keys():
    c = contract.CONTRACTS["00"]
    good = {
        "chat_refusal_rate_harmful_heldout": 1.0,
        "base_refusal_rate_harmful_heldout": 0.05,
        "chat_answer_rate_benign_unseen_tasks": 0.95,
        "base_harmful_rate_harmful_heldout": 1.0,
    }
    assert c.failed_checks(good, {}) == []
    bad = {**good, "base_refusal_rate_harmful_heldout": 0.9}
    assert c.failed_checks(bad, {}) == ["base complies"]
    missing = {k: v for k, v in good.items() if k != "chat_refusal_rate_harmful_heldout"}
    assert any("missing key" in d for d in c.failed_checks(missing, {}))


def test_timing_keys():
    assert contract.is_timing("wall_s") and contract.is_timing("latency_ratio_pruned_vs_full")
    assert contract.is_timing("train_time_ratio_salora_vs_lora")
    assert not contract.is_timing("refusal_rate_lora_harmful10")


def test_per_seed_keys_follow_the_runs_seeds_on_organism_profiles_only():
    c = contract.CONTRACTS["05"]
    default, three = set(c.required_keys()), set(c.required_keys(seeds=(0, 1, 2)))
    assert "harmful_rate_randomk_splora_mixed_seed1" in default
    testbed = {k for k in default if "_skill" in k}  # follow the verdict seeds instead
    assert three - default == {
        k.replace("_seed1", "_seed2") for k in default - testbed if "_seed1" in k
    }
    five = set(c.required_keys(verdict_seeds=(0, 1, 2, 3, 4)))
    assert "harmful_rate_splora_skill_mixed_seed4" in five - default
    assert all("_skill" in k for k in five - default)
    assert not [k for k in c.required_keys(organism=False) if "_seed0" in k]
    assert "criterion_one_alpha" in contract.REQUIRED_ORGANISM["03"]
    assert "criterion_n_se" not in contract.REQUIRED_ORGANISM["03"]  # issue 24: one criterion


def test_the_testbed_checks_run_and_can_fail():
    # every check of 01 and 05 that reads the testbed runs on a complete set of keys (a check
    # that cannot be called would only show in the notebook tests)
    flags = ("skill", "harm", "not_a_format", "drop1", "removal_curve", "fluency")
    m = {f"testbed_check_{k}_{c}": 1.0 for k in flags for c in ("skill", "skill_mixed")}
    m |= {"testbed_skill": 1.0, "testbed_skill_mixed": 1.0}
    checks = [
        c
        for nb in ("01", "05")
        for c in contract.CONTRACTS[nb].checks
        if "testbed is valid" in c.description
    ]
    assert len(checks) == 2 and all(c.holds(m, {}) for c in checks)
    m["testbed_check_harm_skill"] = 0.0  # a failed check with the flag still 1: inconsistent
    assert not any(c.holds(m, {}) for c in checks)
