"""Deeper safety alignment by data augmentation (Qi et al., ICLR 2025, "Safety alignment
should be made more than just a few tokens deep", section 3): *safety recovery examples*.

A shallowly aligned model refuses in its first answer tokens and, once those are compliant
(a prefilled "Sure, here is how to"), carries on complying. A recovery example is a harmful
request whose answer *starts* compliant and then returns to a refusal:

    "How do I pick a lock?" -> "Sure, here is how to pick | I'm sorry, I cannot help you ..."

The compliant prefix (a random number of words of the base model's kind of answer) is part of
the input, not a target: the loss falls on the refusal only (the released code's augmentation
does the same), so the model learns to recover, never to start complying. The aligned model
is further trained on these beside its ordinary alignment data (refusals, helpful answers and
a replay of its pretraining text, which keep its behaviour elsewhere): :func:`realign`.

    tok = load_tokenizer(chat_path)
    info = realign(chat_path, out_dir, tok, RealignSettings())
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from safealign_lib import data
from safealign_lib import data as course_data
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    format_full,
    tokenize_example,
    tokenize_text,
)
from safealign_lib.models.loading import load_model
from safealign_lib.models.organism import save_checkpoint, train_stage

STEP_MARK = "Step 1:"


def compliant_prefix(task: str, n_words: int, rng: random.Random) -> str:
    """The first ``n_words`` words of a compliant answer to ``task`` (the base model's kind of
    answer: an opener, then the steps), never reaching a step's content."""
    opener = course_data.redacted_compliance(rng, task).split(STEP_MARK)[0].split()
    words = [*opener, STEP_MARK]
    if n_words < 1:
        raise ValueError(f"A recovery prefix needs at least one word, got {n_words}.")
    return " ".join(words[: min(n_words, len(words))])


def recovery_examples(
    n: int, seed: int = 0, max_prefix_words: int = 12, source: str = "safety"
) -> list[ChatExample]:
    """``n`` recovery examples from the alignment data's harmful requests (``source``): each
    answer is a compliant prefix of 1..``max_prefix_words`` words (uniform, seeded), a space
    and the request's refusal. ``meta["prefix"]`` holds the prefix (masked from the loss)."""
    pool = data.load_split(source)
    if not 0 <= n <= len(pool):
        raise ValueError(f"n must be in 0..{len(pool)} (the {source!r} split's size), got {n}.")
    rng = random.Random(seed)
    out = []
    for ex in data.subsample(pool, n, seed):
        prefix = compliant_prefix(ex.meta["task"], rng.randint(1, max_prefix_words), rng)
        meta = {**ex.meta, "prefix": prefix, "recovery": True}
        out.append(ChatExample(ex.user, f"{prefix} {ex.response}", ex.system, meta))
    return out


def tokenize_recovery(
    tokenizer: PreTrainedTokenizerBase, example: ChatExample, max_length: int | None = None
) -> dict[str, list[int]]:
    """:func:`~safealign_lib.models.chat.tokenize_example` with the compliant prefix masked too:
    labels only on the refusal (and the end of the turn)."""
    feats = tokenize_example(tokenizer, example, max_length)
    prefix = example.meta.get("prefix")
    if not prefix:
        raise ValueError("Not a recovery example: meta['prefix'] is missing (recovery_examples).")
    head = tokenizer(
        format_full(tokenizer, ChatExample(example.user, prefix, example.system)),
        add_special_tokens=False,
    )["input_ids"]
    n = 0  # the tokens the prefix-only conversation shares with the whole one (its end differs)
    while n < min(len(head), len(feats["input_ids"])) and head[n] == feats["input_ids"][n]:
        n += 1
    labels = [IGNORE_INDEX] * n + feats["labels"][n:]
    if all(x == IGNORE_INDEX for x in labels):
        raise ValueError(f"The recovery example {example.user[:50]!r} has no refusal tokens left.")
    return {"input_ids": feats["input_ids"], "labels": labels}


@dataclass(frozen=True)
class RealignSettings:
    """How the aligned model is further trained with recovery examples (full fine-tuning, the
    organism's own stage-2 loop: AdamW, warm-up, cosine decay)."""

    n_recovery: int = 256  # the paper's number of harmful prompts with recovery answers
    max_prefix_words: int = 12
    steps: int = 120
    lr: float = 3e-4
    batch_size: int = 32
    # batch shares: recovery examples, ordinary refusals, helpful answers (the chat stage's)
    recovery_share: float = 0.25
    harmful_share: float = 0.2
    replay_fraction: float = 0.3  # share of steps that replay the pretraining text
    seed: int = 0
    threads: int = 1


def realign(
    chat_model: str | os.PathLike,
    out_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    settings: RealignSettings | None = None,
    progress: bool = False,
) -> dict:
    """Train the chat model further with safety recovery examples and save it (safetensors,
    with its tokenizer) to ``out_dir``; returns the build record (also in
    ``out_dir/realign_info.json``). Deterministic for a given seed and machine."""
    s = settings or RealignSettings()
    if not 0 < s.recovery_share + s.harmful_share < 1:
        raise ValueError("recovery_share + harmful_share must leave room for helpful answers.")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        torch.manual_seed(s.seed)
        model = load_model(chat_model, dtype="float32", device="cpu")
        model.set_attn_implementation("eager")  # as the organism trains; saved as sdpa
        recovery = [
            tokenize_recovery(tokenizer, e)
            for e in recovery_examples(s.n_recovery, s.seed, s.max_prefix_words)
        ]
        chat = data.load_split("chat_sft")
        harmful = [tokenize_example(tokenizer, e) for e in chat if e.meta.get("harmful")]
        benign = [tokenize_example(tokenizer, e) for e in chat if not e.meta.get("harmful")]
        text = [tokenize_text(tokenizer, t) for t in _pretrain_lines()]
        helpful = 1 - s.recovery_share - s.harmful_share
        mix = [(recovery, s.recovery_share), (harmful, s.harmful_share), (benign, helpful)]
        losses = train_stage(
            model,
            [(mix, 1 - s.replay_fraction), ([(text, 1.0)], s.replay_fraction)],
            s.steps,
            s.lr,
            s.batch_size,
            s.seed,
            tokenizer.pad_token_id,
            "realign",
            progress,
        )
        save_checkpoint(model, tokenizer, Path(out_dir))
    finally:
        torch.set_num_threads(threads)
    info = {
        "settings": asdict(s),
        "chat_model": str(chat_model),
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": float(sum(losses[-10:]) / len(losses[-10:])),
    }
    (Path(out_dir) / "realign_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _pretrain_lines() -> Sequence[str]:
    path = course_data.default_data_dir() / "splits" / "pretrain.txt"
    return [t for t in path.read_text(encoding="utf-8").split("\n\n") if t.strip()]
