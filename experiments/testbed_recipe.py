"""Choose the testbed's recipe on search seeds and validation splits only (issue 22).

For each candidate recipe, in the declared order of :data:`CANDIDATES`, trains the ``skill`` and
``skill_mixed`` adapters on the search seeds (100-102 by default: disjoint from every course
seed), measures every testbed check on the *validation* splits (``skill_val``,
``harmful_heldout_val``, ``benign_heldout_val``) and prints one row per (recipe, condition).
The declared rule: the first candidate that meets every check on both conditions becomes
``studies.testbed.RECIPE``; if none does, the one that meets the most checks (first in order on
a tie), labelled as the closest. ``--proxy`` also checks that the fluency proxy can fail: the
well-formed rate of ``benign_instruct`` adapters (the cpu profile's recipe) with 6 random
modules removed.

    .venv/bin/python experiments/testbed_recipe.py [--seeds 100 101 102] [--only R1] [--proxy]

Results: experiments/RESULTS.md ("The testbed"); the choice: preregistration.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace

import pandas as pd
import torch

from safealign_lib import data, models
from safealign_lib.adapters import finetune
from safealign_lib.config import build_dir
from safealign_lib.course.profiles import get_profile
from safealign_lib.evaluation import Evaluator, editability, skill
from safealign_lib.models.generation import generate
from safealign_lib.studies import conditions, repair
from safealign_lib.studies import testbed as tb

CANDIDATES = {
    "R1": tb.Recipe(),  # all seven linear maps, r 8, dropout 0.1, lr 1e-3, 150 steps
    "R2": replace(tb.Recipe(), n_train=400),
    "R3": replace(tb.Recipe(), dropout=0.2),
}


def run_recipe(name: str, recipe: tb.Recipe, seeds: list[int], P, tok, ev, chat) -> list[dict]:
    """Every check of both testbed conditions under ``recipe`` on the validation splits."""
    chat_scores, _ = tb.evaluate(ev, chat, P, "val")
    fixed = tb.fixed_answer_utility(tb.skill_set(P, "val"))
    rows = []
    for cond in tb.TESTBED_CONDITIONS:
        per_seed, removal, dw = [], [], []
        for s in seeds:
            t0 = time.perf_counter()
            model = finetune.add_lora(models.load_model(P.chat_model), recipe.lora(), seed=s)
            exs = tb.training_examples(cond, P, s, recipe)
            finetune.train(model, tok, exs, recipe.train(P.train, s), desc=f"{cond} {s}")
            scores, _ = tb.evaluate(ev, model, P, "val")
            ratios = editability.update_ratios(model)
            dw.append(ratios)
            rm = tb.removal_table(model, tok, tb.skill_set(P, "val"), seed=s).assign(seed=s)
            removal.append(rm)
            per_seed.append({"seed": s, **scores})
            print(
                f"  {name} {cond} seed {s}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                + f", dw median {ratios.median():.3f}, {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        lora = pd.DataFrame(per_seed)
        removal_df = pd.concat(removal, ignore_index=True)
        out = tb.check(lora, chat_scores, removal_df, fixed)
        allr = pd.concat(dw)
        curve = removal_df[removal_df.m > 0].groupby("m").utility.mean().round(3).to_dict()
        rows.append(
            {
                "recipe": name,
                "condition": cond,
                **{k: round(v, 3) for k, v in out.items()},
                "dw_rel_median": round(float(allr.median()), 3),
                "dw_rel_max": round(float(allr.max()), 3),
                "removal_curve": curve,
                "n_checks_met": int(sum(v for k, v in out.items() if k.startswith("check_"))),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def proxy_check(seeds: list[int], P, tok, draws: int = 4) -> None:
    """The fluency proxy on ``benign_instruct`` adapters (cpu recipe) with 6 modules removed:
    random ones, and the 6 that SPLoRA's score ranks first (the pruning the issue read)."""
    exs = data.load_split("instruct_val")[: P.n_task_eval]

    def score(m):
        texts = generate(m, tok, exs, max_new_tokens=tb.SKILL_MAX_NEW_TOKENS, progress=False)
        return {"well_formed_rate": skill.well_formed_rate(texts.texts)}

    root = build_dir() / "experiments" / "testbed_proxy"
    for s in seeds:
        path, _ = conditions.get_adapter("benign_instruct", s, P, tok, root=root)
        a = repair.RepairAdapter.from_profile(path, P, seed=s)
        df = editability.removal_curve(a.model, score, (0, 6), draws, seed=s)
        by_m = df.groupby("m").well_formed_rate.mean().round(3).to_dict()
        with editability.without_modules(a.model, repair.pick(a.scores, "SPLoRA", 6)):
            chosen = score(a.model)["well_formed_rate"]
        print(
            f"proxy: benign_instruct seed {s}: well-formed rate by random modules removed "
            f"{by_m}; SPLoRA's first 6 removed: {chosen:.3f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    ap.add_argument("--proxy", action="store_true", help="only the fluency-proxy check")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if any(s < 100 for s in a.seeds):
        raise SystemExit("Search seeds must be >= 100: the course's seeds never enter a choice.")
    torch.set_num_threads(a.threads)
    P = get_profile("cpu")
    tok = models.load_tokenizer(P.chat_model)
    if a.proxy:
        proxy_check(a.seeds, P, tok)
        return
    ev = Evaluator.from_profile(P, tok)
    chat = models.load_model(P.chat_model)
    print("checks:", tb.CHECKS.as_dict())
    rows = []
    for name, recipe in CANDIDATES.items():
        if a.only and name not in a.only:
            continue
        print(f"{name}: {asdict(recipe)}", flush=True)
        rows += run_recipe(name, recipe, a.seeds, P, tok, ev, chat)
    df = pd.DataFrame(rows)
    out = build_dir() / "experiments" / "testbed_recipe.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    cols = ["recipe", "condition", "testbed", "n_checks_met", "skill_gain", "harmful_rate_lora"]
    cols += ["drop1_cost_share", "removal_min_utility", "utility_chat", "dw_rel_median"]
    print(df[cols].to_string(index=False))
    met = df.groupby("recipe", sort=False).testbed.min()
    chosen = met[met == 1].index[:1].tolist() or [
        df.groupby("recipe", sort=False).n_checks_met.sum().idxmax() + " (closest)"
    ]
    print(f"chosen by the declared rule: {chosen[0]}; wrote {out}")


if __name__ == "__main__":
    main()
