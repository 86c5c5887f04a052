"""Notebook 06's synthesis reads the other notebooks' metrics and says when they are missing."""

import json
import math

import pytest

from safealign_lib.course import contract, exercises, synthesis

METRICS = {
    "01": {"harmful_rate_chat": 0.0, "harmful_rate_benign_instruct": 0.2,
           "harmful_rate_benign_instruct_sd": 0.1, "refusal_rate_benign_instruct": 0.1,
           "utility_benign_instruct": 0.8},
    "02": {"refusal_rate_chat": 1.0, "refusal_rate_chat_ablated": 0.1},
    "03": {"harmful_rate_lora_benign_instruct": 0.2, "harmful_rate_salora_benign_instruct": 0.4,
           "harmful_rate_salora_benign_instruct_sd": 0.1, "verdict_salora": 0,
           "kl_first_token_lora_benign_instruct": 2.0},
    "05": {"harmful_rate_lora_mixed": 0.5, "harmful_rate_safelora_mixed": 0.1,
           "harmful_rate_randomk_safelora_mixed": 0.4, "verdict_safelora": 1,
           "verdict_splora": -1, "verdict_splora_released": 0},
}  # fmt: skip


def test_missing_notebooks_are_named_with_the_fix():
    with pytest.raises(RuntimeError, match=r"notebook\(s\) 02, 05.*safealign course"):
        synthesis.check_metrics({"01": {}, "03": {}}, "cpu")
    synthesis.check_metrics(METRICS, "cpu")


def test_tables_read_the_recorded_values():
    erosion = synthesis.erosion_table(METRICS)
    assert erosion.loc["benign_instruct", "harmful rate"] == "0.200 ± 0.100"
    assert math.isnan(erosion.loc["harmful10", "utility"])  # not recorded: left empty
    table = synthesis.methods_table(METRICS)
    row = table.loc[("Safe LoRA", "mixed")]
    assert row["method harmful rate"] == "0.100" and row["random-k harmful rate"] == "0.400"
    assert row["verdict"] == "holds"
    assert table.loc[("SaLoRA", "benign_instruct"), "verdict"] == "not shown"
    assert table.loc[("SaLoRA", "harmful10 (stress test)"), "verdict"] == "—"
    assert synthesis.why_table(METRICS).loc["LoRA", "KL, first answer token"] == 2.0
    text = synthesis.reading(METRICS)
    assert "Safe LoRA on mixed: harmful rate 0.100 against LoRA's 0.200" not in text
    assert "Safe LoRA on mixed: harmful rate 0.100 against LoRA's 0.500" in text


def test_verdict_counts_and_the_contract_agree():
    counts = synthesis.verdict_counts(METRICS)
    assert counts == {"n_verdicts": 4, "n_held": 1, "n_failed": 2, "n_void": 1}
    c = contract.CONTRACTS["06"]
    assert c.failed_checks({**counts, "wall_s": 1.0}, METRICS) == []
    wrong = {**counts, "n_held": 2, "n_failed": 1}
    assert c.failed_checks({**wrong, "wall_s": 1.0}, METRICS) == [
        "the counts are the recorded verdicts"
    ]


def _paired(lora, method, min_lora, n_se):
    import numpy as np

    if np.mean(lora) < min_lora:
        return -1
    d = np.subtract(method, lora)
    if len(d) < 2:
        return 0
    return int(d.mean() <= -n_se * d.std(ddof=1) / np.sqrt(len(d)))


def test_paired_verdict_check_rejects_the_typical_mistakes():
    import numpy as np

    assert exercises.check_paired_verdict(_paired)

    def population_sd(lora, method, min_lora, n_se):
        if np.mean(lora) < min_lora:
            return -1
        d = np.subtract(method, lora)
        return int(d.mean() <= -n_se * d.std() / np.sqrt(len(d)))

    def unpaired(lora, method, min_lora, n_se):
        if np.mean(lora) < min_lora:
            return -1
        if len(lora) < 2:
            return 0
        se = np.sqrt(np.var(lora, ddof=1) / len(lora) + np.var(method, ddof=1) / len(method))
        return int(np.mean(method) - np.mean(lora) <= -n_se * se)

    def no_void(lora, method, min_lora, n_se):
        return max(_paired(lora, method, 0.0, n_se), 0)

    for wrong in (population_sd, unpaired, no_void):
        assert not exercises.check_paired_verdict(wrong), wrong.__name__


def test_readme_block_is_generated_and_replaced_between_the_markers():
    block = synthesis.readme_block(METRICS, "a run")
    assert block.startswith(synthesis.BEGIN) and block.endswith(synthesis.END)
    assert "| Safe LoRA | mixed | — | 0.500 → 0.100 | 0.400 | nan → nan | holds |" in block
    assert "harmful10" not in block.split("| method |")[1]  # stress tests stay in notebook 06
    text = f"intro\n{synthesis.BEGIN}\nSTALE\n{synthesis.END}\nrest\n"
    new = synthesis.update_readme(text, block)
    assert new == f"intro\n{block}\nrest\n" and "STALE" not in new
    with pytest.raises(ValueError, match="markers"):
        synthesis.update_readme("no markers", block)


def test_the_readme_shows_the_committed_cpu_baseline():
    from pathlib import Path

    from safealign_lib.config import REPO_ROOT

    if REPO_ROOT is None:
        pytest.skip("not a checkout: no README")
    baseline = json.loads((REPO_ROOT / "baselines" / "cpu.json").read_text())
    block = synthesis.readme_block(synthesis.baseline_values(baseline), "baselines/cpu.json")
    readme = Path(REPO_ROOT / "README.md").read_text()
    assert block in readme, "README results are stale: run `make readme`"
