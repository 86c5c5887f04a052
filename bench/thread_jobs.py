"""The job of bench/bench_threads.py, in a module of its own so that spawned workers import it."""

from __future__ import annotations

from dataclasses import replace

from safealign_lib.adapters.finetune import add_lora, train
from safealign_lib.course.profiles import get_profile
from safealign_lib.models.loading import load_model, load_tokenizer
from safealign_lib.studies import conditions


def finetune_job(seed: int, steps: int) -> float:
    """``steps`` LoRA steps of notebook 01's ``harmful10`` adapter (cpu profile) with ``seed``;
    returns the training seconds."""
    P = get_profile("cpu")
    tok = load_tokenizer(P.chat_model)
    model = add_lora(load_model(P.chat_model), P.lora, seed=seed)
    settings = replace(conditions.train_settings("harmful10", P, seed), steps=steps)
    return train(model, tok, conditions.training_examples("harmful10", P, seed), settings).seconds
