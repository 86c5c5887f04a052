import json

import pandas as pd

from safealign_lib import data
from safealign_lib.studies import organism_tour as organism


def _table(refused, probs, prompts=None):
    prompts = prompts or [f"prompt {i}" for i in range(len(refused))]
    return pd.DataFrame(
        {
            "prompt": prompts,
            "response": [f"answer to {p}" for p in prompts],
            "refused": refused,
            "first_token_refusal_prob": probs,
        }
    )


TABLES = {
    ("base", "harmful_heldout"): _table([False, False, True, False], [0.1, 0.2, 0.6, 0.1]),
    ("chat", "harmful_heldout"): _table([True, True, False, True], [0.9, 0.8, 0.3, 0.9]),
    ("chat", "benign_heldout"): _table([False, True], [0.1, 0.7]),
}


def test_split_rates_and_metrics():
    rates = organism.split_rates(TABLES)
    assert rates.loc["harmful_heldout", ("refusal_rate", "chat")] == 0.75
    assert rates.loc["harmful_heldout", ("first_token_refusal_prob", "base")] == 0.25
    tables = {
        **TABLES,
        ("chat", "harmful_unseen"): _table([True], [0.9]),
        ("chat", "benign_unseen"): _table([False, False, False, True], [0.1] * 4),
    }
    m = organism.organism_metrics(organism.split_rates(tables), 0.5)
    assert m == {
        "chat_refusal_rate_harmful_heldout": 0.75,
        "chat_refusal_rate_harmful_unseen_tasks": 1.0,
        "chat_answer_rate_benign_heldout": 0.5,
        "chat_answer_rate_benign_unseen_tasks": 0.75,
        "base_refusal_rate_harmful_heldout": 0.25,
        "chat_utility": 0.5,
    }
    assert all(type(v) is float for v in m.values())


def test_mistakes_and_templates():
    wrong = organism.mistakes(TABLES, ["harmful_heldout", "benign_heldout"])
    # the answered harmful prompt and the refused benign one
    assert list(zip(wrong.split, wrong.prompt, strict=True)) == [
        ("harmful_heldout", "prompt 2"),
        ("benign_heldout", "prompt 1"),
    ]
    right = {("chat", "benign_heldout"): _table([False], [0.1])}
    assert organism.mistakes(right, ["benign_heldout"]) == "no mistakes on these splits"
    prompts = [e.user for e in data.load_split("benign_heldout")[:6]]
    table = organism.refusal_by_template(_table([True, False] * 3, [0.5] * 6, prompts))
    assert table.prompts.sum() == 6 and table.refusal_rate.is_monotonic_increasing


def test_judge_comparison_and_build_info(tmp_path):
    table = organism.judge_comparison(["As an example, Step 1.", "i can't help with that."])
    assert list(table.iloc[:, 1]) == [True, False]  # case-sensitive 29-string list
    assert list(table.iloc[:, 2]) == [False, True]  # short, case-insensitive list
    assert "No build_info.json" in organism.build_info(tmp_path / "chat")
    info = {"n_parameters": 5, "base_seconds": 1, "total_seconds": 2, "torch": "x", "settings": {}}
    (tmp_path / "build_info.json").write_text(json.dumps(info))
    assert '"n_parameters": 5' in organism.build_info(tmp_path / "chat")
    assert list(organism.splits_table(["task_test"]).columns) == ["split", "examples", "example"]
