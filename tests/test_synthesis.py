"""Notebook 07's synthesis reads the other notebooks' metrics and says when they are missing."""

import json
import math

import pytest

from safealign_lib.course import contract, exercises
from safealign_lib.evaluation.criterion import Criterion, judge_table, paired_t
from safealign_lib.studies import synthesis

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
    "06": {"n_seeds": 5.0},  # a hub profile's notebook 06: no testbed, no verdict
}  # fmt: skip


def test_missing_notebooks_are_named_with_the_fix():
    with pytest.raises(RuntimeError, match=r"notebook\(s\) 02, 05, 06.*safealign course"):
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
    assert row["LoRA harmful rate"] == "0.500"  # the regime's own LoRA, not notebook 01's


def test_verdict_counts_and_the_contract_agree():
    counts = synthesis.verdict_counts(METRICS)
    assert counts == {
        "n_verdicts": 4,
        "n_held": 1,
        "n_not_shown": 2,
        "n_worse": 0,
        "n_void": 1,
        "n_failed": 2,
    }
    testbed = {**METRICS, "05": {**METRICS["05"], "verdict_splora_testbed": -2.0}}
    more = synthesis.verdict_counts(testbed)
    assert more["n_verdicts"] == 5 and more["n_worse"] == 1 and more["n_failed"] == 3
    c = contract.CONTRACTS["07"]
    assert c.failed_checks({**counts, "wall_s": 1.0}, METRICS) == []
    wrong = {**counts, "n_held": 2, "n_failed": 1}
    assert c.failed_checks({**wrong, "wall_s": 1.0}, METRICS) == [
        "the counts are the recorded verdicts"
    ]


def test_paired_t_check_passes_the_library_and_rejects_a_swapped_difference():
    assert exercises.check_paired_t(paired_t)
    with pytest.raises(ValueError, match="one treated value per control value"):
        paired_t([0.3, 0.4], [0.1])

    def swapped(control, treated):  # control - treated: every sign flipped
        mean, t, p = paired_t(treated, control)
        return mean, t, p

    assert not exercises.check_paired_t(swapped)


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


# --- notebook 07 recomputes every verdict from the per-seed values 03 and 05 recorded ----------


def _runs(rng, methods, conditions, seeds, same_as_lora=(), harmless=False):
    """Per-seed rates on a coarse grid (ties and zero differences happen, as on the organism's
    small evaluation sets); methods in ``same_as_lora`` copy LoRA (a selection at k = 0);
    ``harmless``: LoRA's harmful rate at most 1/8 (a void test)."""
    import pandas as pd

    rows = []
    for c in conditions:
        for s in seeds:
            lora = {q: rng.integers(1, 9) / 8 for q in synthesis.SEED_QUANTITIES}
            lora["harmful_rate"] = rng.integers(0, 2 if harmless else 9) / 8
            for m in methods:
                if m == "LoRA" or m in same_as_lora:
                    vals = lora
                else:  # mostly lower harm, sometimes a utility or benign-answer cost
                    vals = {
                        "harmful_rate": max(lora["harmful_rate"] - rng.integers(-1, 8) / 8, 0.0),
                        "utility": lora["utility"] - rng.choice([0, 0, 0, 0.125]),
                        "benign_answer_rate": lora["benign_answer_rate"]
                        - rng.choice([0, 0, 0, 0.5]),
                    }
                rows.append({"condition": c, "seed": s, "method": m, **vals})
    return pd.DataFrame(rows)


def _recorded_run(rng):
    """One run's metrics of 03 and 05 as the notebooks record them, with the library's own
    verdicts (the one criterion, through ``judge_table`` as the notebooks call it) on random
    per-seed values."""
    from safealign_lib.studies import repair

    seeds, harmless = [0, 1, 2, 3, 4][: rng.integers(1, 6)], bool(rng.random() < 0.2)
    crit = Criterion(0.15, 0.5, 0.05, 0.05)
    one = {f"criterion_one_{k}": v for k, v in crit.as_dict().items()}
    runs = _runs(rng, ["LoRA", "SaLoRA"], ["benign_instruct", "harmful10"], seeds, (), harmless)
    why = runs[runs.condition == "benign_instruct"]
    # whether a regime tells a repair from deleting the adapter (recorded; else void)
    ok = {c: bool(rng.random() < 0.8) for c in synthesis.PAPER_REGIMES}
    v03 = int(
        judge_table(why, ["SaLoRA"], crit, {"benign_instruct": ok["benign_instruct"]}).code[
            "SaLoRA"
        ]
    )
    m03 = synthesis.salora_inputs(v03, runs, "benign_instruct") | one
    m03["regime_valid_benign_instruct"] = int(ok["benign_instruct"])
    same = tuple(rng.choice(repair.SELECTIONS, rng.integers(0, 2), replace=False))
    k = {m: 0 if m in same else int(rng.integers(1, 5)) for m in repair.SELECTIONS}
    test = _runs(rng, ["LoRA", *repair.SELECTIONS], synthesis.PAPER_REGIMES, seeds, same, harmless)
    rand = test[test.method != "LoRA"].assign(method=lambda d: "random " + d.method)
    rand = rand.assign(harmful_rate=rand.harmful_rate + rng.integers(-1, 3, len(rand)) / 8)
    verdicts = repair.judge_selections(test, rand, k, repair.SELECTIONS, crit, ok)
    m05 = {f"verdict_{repair.KEYS[m]}": int(v) for m, v in verdicts.code.items()}
    m05 |= {f"regime_valid_{c}": int(v) for c, v in ok.items()}
    m05 |= {f"k_own_{repair.KEYS[m]}": k[m] for m in repair.SELECTIONS}
    m05 |= synthesis.selection_inputs(test, rand, repair.KEYS) | one
    return {"03": m03, "05": m05}


def test_recomputed_verdicts_agree_with_the_recorded_ones_on_the_solution():
    import numpy as np

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(80):
        metrics = _recorded_run(rng)
        table = synthesis.recomputed_verdicts(metrics, paired_t)
        assert len(table) == 4 and table.agree.all(), table
        seen |= set(table.recorded)
    assert seen == {"holds", "not shown", "void", "worse"}  # every kind of verdict was compared


def test_recomputed_verdicts_show_a_wrong_paired_test():
    import numpy as np
    from scipy import stats

    def two_sided(control, treated):
        mean, t, p = paired_t(control, treated)
        return mean, t, 2 * min(p, 1 - p)

    def normal(control, treated):
        mean, t, p = paired_t(control, treated)
        return mean, t, p if not np.isfinite(t) else float(stats.norm.cdf(t))

    rng = np.random.default_rng(1)
    runs = [_recorded_run(rng) for _ in range(40)]
    for wrong in (two_sided, normal):
        assert any(not synthesis.recomputed_verdicts(m, wrong).agree.all() for m in runs), (
            wrong.__name__
        )


def test_recorded_inputs_are_the_contracts_per_seed_keys():
    import numpy as np

    metrics = _recorded_run(np.random.default_rng(2))
    for nb in ("03", "05"):
        c = contract.CONTRACTS[nb]
        seeds = tuple(sorted({int(k.rsplit("_seed", 1)[1]) for k in metrics[nb] if "_seed" in k}))
        per_seed = set(c.required_keys(seeds=seeds)) - set(c.required_keys(seeds=()))
        # the one criterion's settings, the k each selection chose, the regimes' validity
        keep = ("criterion_one_", "k_own_", "regime_valid_")
        other = {k for k in c.required_keys(seeds=()) if k.startswith(keep)}
        assert per_seed and other
        assert {k for k in metrics[nb] if not k.startswith("verdict_")} == per_seed | other
    assert "utility_randomk_splora_released_mixed_seed0" in metrics["05"]
    assert metrics["03"]["criterion_one_max_ratio"] == 0.5


def test_a_run_without_per_seed_values_shows_no_recomputed_verdict():
    table = synthesis.recomputed_verdicts(METRICS, paired_t)
    assert list(table.recomputed) == ["—"] * 4 and not table.agree.any()
    assert table.loc["Safe LoRA", "regime"] == "benign_instruct + mixed"


def test_a_run_without_a_harm_judge_records_what_it_has_and_shows_no_verdicts():
    import pandas as pd

    runs = pd.DataFrame(  # a hub profile's notebook 03: no harmful rate
        {"method": ["LoRA", "SaLoRA"], "condition": "benign_instruct", "seed": 0,
         "utility": [0.5, 0.4], "benign_answer_rate": [1.0, float("nan")]}
    )  # fmt: skip
    keys = synthesis.seed_metrics(runs, synthesis.SALORA_KEYS)
    assert keys == {
        "utility_lora_benign_instruct_seed0": 0.5,
        "benign_answer_rate_lora_benign_instruct_seed0": 1.0,
        "utility_salora_benign_instruct_seed0": 0.4,
    }
    table = synthesis.recomputed_verdicts({"03": keys, "05": {}}, paired_t)
    assert table.empty and list(table.columns) == ["regime", "recorded", "recomputed", "agree"]
