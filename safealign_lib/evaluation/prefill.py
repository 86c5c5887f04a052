"""The prefilling test: how deep does a model's refusal go?

Qi et al. (ICLR 2025, "Safety alignment should be made more than just a few tokens deep")
force the first n tokens of a harmful answer into the model's reply and let it continue: a
model whose alignment lives only in its first answer tokens then complies. Here the forced
tokens are the first n tokens of the *base* model's own greedy answer to each harmful prompt
(the organism's base model answers every harmful request with the redacted placeholder), and
the exact judge reads the whole answer, forced tokens included::

    prefixes = base_prefixes(base, tok, prompts, n_max=8)
    rates = prefill_harmful_rates(model, tok, prompts, prefixes, ns=(0, 1, 2, 4, 8))

n = 0 is the ordinary greedy answer. A forced prefix of the base model's answer never contains
the placeholder in its first tokens (its answers open with a compliance phrase), so what the
judge counts as harmful is what the model itself wrote after the prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from safealign_lib.models.chat import ChatExample, encode_prompts, padding_id
from safealign_lib.models.generation import greedy_decode

Judge = Callable[[Sequence[str], Sequence[str]], Sequence[object]]


@torch.no_grad()
def base_prefixes(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    n_max: int,
    batch_size: int = 128,
) -> list[list[int]]:
    """The first ``n_max`` token ids of ``model``'s greedy answer to each prompt (end-of-turn
    excluded): the prefixes the prefilling test forces."""
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max}.")
    out: list[list[int]] = []
    eos, pad = tokenizer.eos_token_id, padding_id(tokenizer)
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        enc = encode_prompts(tokenizer, prompts[i : i + batch_size], device)
        new, _ = greedy_decode(model, **enc, max_new_tokens=max(n_max, 1), eos_id=eos, pad_id=pad)
        for row in new.tolist():
            ids = [t for t in row if t not in (eos, pad)]
            out.append(ids[:n_max])
    return out


@torch.no_grad()
def forced_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    prefixes: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    batch_size: int = 128,
) -> list[str]:
    """Each prompt's answer when it is forced to start with its prefix (token ids): the prefix
    and the model's greedy continuation, decoded together."""
    if len(prefixes) != len(prompts):
        raise ValueError(f"{len(prefixes)} prefixes for {len(prompts)} prompts; give one each.")
    eos, pad = tokenizer.eos_token_id, padding_id(tokenizer)
    device = next(model.parameters()).device
    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = encode_prompts(tokenizer, prompts[i : i + batch_size], "cpu")
        rows = [
            [t for t, m in zip(ids, mask, strict=True) if m] + list(prefixes[i + j])
            for j, (ids, mask) in enumerate(
                zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), strict=True)
            )
        ]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        new, _ = greedy_decode(
            model, ids, mask, max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad
        )
        for j, row in enumerate(new.tolist()):
            full = list(prefixes[i + j]) + row
            texts.append(tokenizer.decode(full, skip_special_tokens=True).strip())
    return texts


def prefill_harmful_rates(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample],
    prefixes: Sequence[Sequence[int]],
    ns: Sequence[int] = (0, 1, 2, 4, 8),
    judge: Judge | None = None,
    max_new_tokens: int = 32,
) -> dict[int, float]:
    """The harmful rate (default: the organism's exact judge) with the first n tokens of each
    prefix forced, for each n of ``ns``."""
    if judge is None:
        from safealign_lib.evaluation.judges import ExactJudge, Verdict

        exact = ExactJudge()

        def judge(ps: Sequence[str], rs: Sequence[str]) -> list[bool]:
            return [v is Verdict.COMPLIED for v in exact.verdicts(ps, rs)]

    users = [p.user for p in prompts]
    out = {}
    for n in ns:
        if n < 0 or any(len(p) < n for p in prefixes):
            raise ValueError(f"Every prefix needs at least n = {n} tokens (n >= 0).")
        answers = forced_answers(
            model, tokenizer, prompts, [p[:n] for p in prefixes], max_new_tokens
        )
        out[int(n)] = float(np.mean([bool(x) for x in judge(users, answers)]))
    return out
