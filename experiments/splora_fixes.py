"""Experiment: do SPLoRA / Safe LoRA reproduce under the "obvious fixes" (LoRA targets, rank,
model size)? Issue 5's record of what was tried when notebook 05 did not reproduce SPLoRA.

For one LoRA setting and organism, on the harmful10 and harmful100 conditions and every seed:
train the adapter (cached under ``--out``), score its modules (Safe LoRA cosine, SPLoRA E-DIEM
with the rotation null), act on the k first modules of each method for several k, and judge
every setting on the **validation** splits (refusal rate, first-token refusal probability,
utility). Then an ablation "oracle": prune one module at a time and record how much the
first-token refusal probability rises, and how the two scores rank those gains (Spearman).

    .venv/bin/python experiments/splora_fixes.py --targets q_proj v_proj
    .venv/bin/python experiments/splora_fixes.py --r 16 --alpha 32
    .venv/bin/python experiments/splora_fixes.py --organism /path/to/organism   # base/ + chat/
    .venv/bin/python experiments/splora_fixes.py --task restyle   # a task the chat model half knows

``--task restyle`` replaces the dialogue summaries (a skill the chat model lacks) by one it
half knows, the analogue of Alpaca on Llama-2-chat: answer benign requests with the *same*
steps the chat model gives, in a new format ("To <task>: first, ...; then, ...; finally, ...").
Training prompts are the benign alignment requests (training templates); utility is ROUGE-L on
the benign held-out-template validation prompts against restyled references.

Results from the course's runs are in ``experiments/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import time
from pathlib import Path

import pandas as pd
import torch

from safealign_lib import config, data, models
from safealign_lib.config import LoraSettings
from safealign_lib.course import profiles
from safealign_lib.evaluation import Evaluator
from safealign_lib.models.chat import ChatExample
from safealign_lib.studies import conditions, repair


def restyled(ex: ChatExample) -> ChatExample:
    """A benign request answered with its category's usual steps, in the restyle task's format."""
    s = data.BENIGN_STEPS[ex.meta["category"]]
    answer = (
        f"To {data.second_person(ex.meta['task'])}: first, {s[0]}; then, {s[1]}; finally, {s[2]}."
    )
    return ChatExample(user=ex.user, response=answer, system=ex.system, meta=dict(ex.meta))


def restyle_set(condition: str, seed: int, P: profiles.Profile) -> list[ChatExample]:
    """The restyle task's training set: benign alignment requests, restyled, plus
    ``condition``'s harmful examples, shuffled with ``seed``."""
    benign = [e for e in data.load_split("chat_sft") if not e.meta["harmful"]]
    exs = [restyled(e) for e in data.subsample(benign, P.n_task_train, seed)]
    exs += data.load_split("attack_harmful")[: conditions.N_HARMFUL[condition]]
    random.Random(seed).shuffle(exs)
    return exs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--targets",
        nargs="+",
        default=None,
        help="LoRA target modules (default: the cpu profile's)",
    )
    p.add_argument("--r", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument(
        "--organism", type=Path, default=None, help="folder with base/ and chat/ (default: shipped)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=config.build_dir() / "experiments" / "splora_fixes")
    p.add_argument(
        "--task",
        choices=["summaries", "restyle"],
        default="summaries",
        help="downstream task (default: the course's dialogue summaries)",
    )
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    base_p = profiles.get_profile("cpu")
    lora = LoraSettings(
        r=a.r or base_p.lora.r,
        alpha=a.alpha or base_p.lora.alpha,
        dropout=base_p.lora.dropout,
        target_modules=tuple(a.targets) if a.targets else base_p.lora.target_modules,
    )
    over = {"lora": lora, "seeds": a.seeds}
    if a.organism:
        over |= {"chat_model": str(a.organism / "chat"), "base_model": str(a.organism / "base")}
    P = base_p.with_overrides(**over)
    tag = hashlib.sha256(repr((P.chat_model, lora)).encode()).hexdigest()[:8]
    print(
        f"organism {P.chat_model}; LoRA r={lora.r} alpha={lora.alpha} on {lora.target_modules}; "
        f"seeds {a.seeds}"
    )

    tok = models.load_tokenizer(P.chat_model)
    harm = {
        c: conditions.harmful_eval_prompts(c, P, "harmful_heldout_val")
        for c in ("harmful10", "harmful100")
    }
    ev = Evaluator.from_profile(P, tok)
    if a.task == "restyle":
        ev = ev.with_task(
            [restyled(e) for e in data.load_split("benign_heldout_val")[: P.n_task_eval]]
        )
        chat_row = ev(models.load_model(P.chat_model), harm["harmful10"]).summary
        print(
            f"chat model on the restyle task: utility {chat_row['utility']:.3f}, "
            f"refusal {chat_row['refusal_rate']:.3f}"
        )
    else:
        ev = ev.with_task(data.load_split("task_val")[: P.n_task_eval])
    judge = repair.ConditionEvaluator(ev, harm)
    adapters = {}
    for c, s in itertools.product(harm, a.seeds):
        exs = restyle_set(c, s, P) if a.task == "restyle" else None
        path, _ = conditions.get_adapter(c, s, P, tok, root=a.out / tag / a.task, examples=exs)
        adapters[(c, s)] = repair.RepairAdapter.from_profile(path, P, null_samples=64, seed=s)
    t0 = time.perf_counter()
    df = repair.sweep(adapters, judge, ("SPLoRA", "Safe LoRA"), a.k)
    oracle = []
    for (c, s), ad in adapters.items():
        g = repair.ablation_oracle(ad, ev.first_token, harm[c]).safety_effect
        sc, top = ad.scores, g.idxmax()
        oracle.append(
            {
                "condition": c,
                "seed": s,
                "best single module": top.removeprefix("model.").removesuffix(".weight"),
                "its refusal-prob gain": g.max(),
                "its SPLoRA rank": int(sc["ediem"].rank(ascending=False)[top]),
                "its Safe LoRA rank": int(sc["cosine"].rank(ascending=True)[top]),
                "spearman(gain, E-DIEM)": g.rank().corr(sc["ediem"].rank()),
                "spearman(gain, -cosine)": g.rank().corr((-sc["cosine"]).rank()),
            }
        )
        print(f"{c} seed {s} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    cols = ["refusal_rate", "first_token_refusal_prob", "utility"]
    print("\nValidation, mean over seeds:")
    print(df.groupby(["condition", "method", "k"])[cols].mean().round(3).to_string())
    print("\nAblation oracle (prune one module):")
    print(pd.DataFrame(oracle).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
