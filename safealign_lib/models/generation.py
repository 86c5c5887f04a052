"""Batched greedy generation (left padding), optionally with per-answer token entropy;
:func:`chat` for trying a model by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.models.chat import ChatExample, check_prompts, encode_prompts, padding_id


@dataclass
class Generations:
    """Decoded answers, plus the mean token entropy (nats) of each answer when requested."""

    texts: list[str]
    entropy: list[float] | None = None


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample | str],
    max_new_tokens: int = 48,
    batch_size: int = 32,
    with_entropy: bool = False,
    progress: bool = True,
    desc: str = "generate",
) -> Generations:
    """Greedy answers to ``prompts`` (chat-formatted), ``batch_size`` prompts at a time.

    Greedy decoding makes the outputs deterministic, so seeds only matter for training.
    With ``with_entropy`` the mean entropy of the next-token distribution over each answer's
    tokens (up to and including end-of-turn) is returned as an uncertainty score.
    """
    check_prompts(prompts, "generate")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be >= 1.")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = []
    ents: list[float] = []
    eos = tokenizer.eos_token_id
    pad = padding_id(tokenizer)
    batches = range(0, len(prompts), batch_size)
    with worklog.record("generation") as w:
        for i in tqdm(batches, desc=desc, disable=not progress, leave=False):
            enc = encode_prompts(tokenizer, prompts[i : i + batch_size], device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_scores=with_entropy,
            )
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            w["tokens"] += out.sequences.numel()  # prompt and new tokens, padding included
            texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            if with_entropy:
                logp = torch.stack(out.scores, dim=1).float().log_softmax(-1)  # (b, steps, vocab)
                h = -(logp.exp() * logp).nan_to_num().sum(-1)  # (b, steps)
                # count tokens up to and including the first end-of-turn
                is_end = (new == eos) | (new == pad)
                alive = (is_end.cumsum(1) - is_end.long()) == 0
                ents += ((h * alive).sum(1) / alive.sum(1).clamp(min=1)).tolist()
    if was_training:
        model.train()
    return Generations(texts, ents if with_entropy else None)


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample | str],
    max_new_tokens: int = 40,
) -> list[str]:
    """The model's greedy replies to ``prompts`` (plain strings are user turns), without a
    progress bar: for trying a model by hand."""
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False).texts
