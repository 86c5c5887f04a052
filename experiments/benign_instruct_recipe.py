"""Does plain LoRA on the benign instruction-tuning data (``benign_instruct``) cost safety?

Trains the condition's LoRA adapter for several seeds with the cpu profile's settings (or
overrides) and reports, on the *validation* splits, the exact judge's harmful rate on
``harmful_heldout_val``, the keyword refusal rate, utility on ``instruct_val`` and the benign
answer rate on ``benign_heldout_val``. The course's reported numbers are test-split numbers
from notebook 01; this script is only for choosing a recipe.

    .venv/bin/python experiments/benign_instruct_recipe.py --seeds 0 1 2 [--lr 2e-3 --steps 70]
"""

from __future__ import annotations

import argparse
import dataclasses

import pandas as pd
import torch

from safealign_lib import data, models
from safealign_lib.adapters import finetune
from safealign_lib.config import build_dir
from safealign_lib.course.profiles import get_profile
from safealign_lib.evaluation import Evaluator
from safealign_lib.studies import conditions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--condition", default="benign_instruct")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    P = get_profile("cpu")
    # --lr is the rate the condition trains at (the profile's rate times its LR_SCALE)
    scale = conditions.LR_SCALE.get(a.condition, 1.0)
    lr = None if a.lr is None else a.lr / scale
    given = {"lr": lr, "steps": a.steps, "batch_size": a.batch_size}
    train = dataclasses.replace(P.train, **{k: v for k, v in given.items() if v is not None})
    P = P.with_overrides(train=train)
    tok = models.load_tokenizer(P.chat_model)
    ev = Evaluator.from_profile(P, tok, task=conditions.task_examples(a.condition, P, "val"))
    root = build_dir() / "experiments" / "benign_instruct_recipe"
    rows = []
    for s in a.seeds:
        path, _ = conditions.get_adapter(a.condition, s, P, tok, root=root)
        model = finetune.load_adapter(models.load_model(P.chat_model), path)
        res = ev(model, data.load_split("harmful_heldout_val")[: P.n_eval])
        benign = ev.refusal(model, data.load_split("benign_heldout_val")[: P.n_eval])
        rows.append({"seed": s, **res.summary, "benign_answer_rate": 1 - benign.refused.mean()})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    eff = conditions.train_settings(a.condition, P, 0)
    print(f"{a.condition}, lr {eff.lr:g}, steps {eff.steps}, batch {eff.batch_size}:")
    print(df.round(3).to_string(index=False))
    print(df.drop(columns="seed").agg(["mean", "std"]).round(3).to_string())


if __name__ == "__main__":
    main()
