"""Batched greedy generation (left padding), optionally with per-answer token entropy;
:func:`chat` for trying a model by hand.

Greedy decoding runs in a loop of the model's own forward passes (:func:`greedy_decode`): rows
whose answer has ended leave the batch, so the later steps of a batch cost only its long
answers. Each row's arithmetic is that of a full-batch step (row-wise layers, the same
padding), so the answers are those of ``model.generate``; a model whose generation config
changes the logits (a repetition penalty, forced or suppressed tokens...) goes through
``model.generate`` instead, which applies it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.models import chat as _chat
from safealign_lib.models import memo
from safealign_lib.models.chat import ChatExample, check_prompts, encode_prompts, padding_id

# generation-config fields whose non-default values make ``model.generate`` change the logits
# of a greedy step (value: the neutral default)
_LOGIT_SETTINGS = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
}
# shrink the batch once this share of its rows has finished (each shrink copies the cache)
_SHRINK_AT = 0.25


@dataclass
class Generations:
    """Decoded answers, plus the mean token entropy (nats) of each answer when requested."""

    texts: list[str]
    entropy: list[float] | None = None


def plain_greedy(model: torch.nn.Module) -> bool:
    """Whether greedy decoding of ``model`` is argmax of its logits (no setting of its generation
    config changes them), so :func:`greedy_decode` gives ``model.generate``'s answers."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return True
    return all(getattr(cfg, k, v) in (v, None) for k, v in _LOGIT_SETTINGS.items())


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row's next-token distribution."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).nan_to_num().sum(-1)


@torch.no_grad()
def greedy_decode(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Greedy continuation of a left-padded batch: the new tokens ``(b, steps)``, ``pad_id``
    after each row's ``eos_id`` (as ``model.generate`` returns them), and with ``with_entropy``
    the entropy of every step's next-token distribution ``(b, steps)`` (0 once a row has left
    the batch). Finished rows leave the batch, and the KV cache, whenever a quarter of the rows
    still in it have ended."""
    b = input_ids.shape[0]
    device = input_ids.device
    new = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    ent = torch.zeros(b, max_new_tokens, device=device) if with_entropy else None
    rows = torch.arange(b, device=device)  # the original row of each row still in the batch
    alive = torch.ones(b, dtype=torch.bool, device=device)
    mask = attention_mask
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as model.generate
    cache = DynamicCache()
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    pos = pos[:, -1:]
    steps = 0
    while True:
        logits = out.logits[:, -1]
        tok = logits.argmax(-1)
        new[rows[alive], steps] = tok[alive]
        if ent is not None:
            ent[rows, steps] = _entropy(logits)
        alive &= tok != eos_id
        steps += 1
        if steps == max_new_tokens or not bool(alive.any()):
            break
        if int((~alive).sum()) >= _SHRINK_AT * len(rows):
            idx = alive.nonzero().squeeze(1)
            cache.batch_select_indices(idx)
            rows, tok, mask, pos, alive = rows[idx], tok[idx], mask[idx], pos[idx], alive[idx]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        pos = pos + 1
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
        )
    return new[:, :steps], None if ent is None else ent[:, :steps]


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
    encs = [
        encode_prompts(tokenizer, prompts[i : i + batch_size], device)
        for i in range(0, len(prompts), batch_size)
    ]
    settings = {
        "max_new_tokens": max_new_tokens,
        "with_entropy": with_entropy,
        "device": device.type,
        "tokenizer": [tokenizer.name_or_path, len(tokenizer)],
        "generation_config": getattr(getattr(model, "generation_config", None), "to_dict", dict)(),
    }
    return memo.remember(
        "generate",
        model,
        encs,
        settings,
        _CODE,
        lambda: _generate(model, tokenizer, encs, max_new_tokens, with_entropy, progress, desc),
        dump=lambda g: [g.texts, g.entropy],
        load=lambda v: Generations(*v),
    )


def _generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    encs: Sequence[dict[str, torch.Tensor]],
    max_new_tokens: int,
    with_entropy: bool,
    progress: bool,
    desc: str,
) -> Generations:
    """:func:`generate` on encoded batches, without the cache."""
    was_training = model.training
    model.eval()
    texts: list[str] = []
    ents: list[float] = []
    eos = tokenizer.eos_token_id
    pad = padding_id(tokenizer)
    lean = plain_greedy(model)
    with worklog.record("generation") as w:
        for enc in tqdm(encs, desc=desc, disable=not progress, leave=False):
            if lean:
                new, h = greedy_decode(
                    model,
                    **enc,
                    max_new_tokens=max_new_tokens,
                    eos_id=eos,
                    pad_id=pad,
                    with_entropy=with_entropy,
                )
            else:
                new, h = _hf_generate(model, enc, max_new_tokens, eos, pad, with_entropy)
            # prompt and new tokens, padding included (as a full batch would compute them)
            w["tokens"] += new.numel() + enc["input_ids"].numel()
            texts += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            if with_entropy:
                # count tokens up to and including the first end-of-turn
                is_end = (new == eos) | (new == pad)
                alive = (is_end.cumsum(1) - is_end.long()) == 0
                ents += ((h * alive).sum(1) / alive.sum(1).clamp(min=1)).tolist()
    if was_training:
        model.train()
    return Generations(texts, ents if with_entropy else None)


def _hf_generate(
    model: PreTrainedModel,
    enc: dict[str, torch.Tensor],
    max_new_tokens: int,
    eos: int,
    pad: int,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`greedy_decode`'s outputs from ``model.generate`` (which applies the generation
    config's logit settings)."""
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
    if not with_entropy:
        return new, None
    return new, _entropy(torch.stack(out.scores, dim=1))  # scores: (b, steps, vocab)


def chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample | str],
    max_new_tokens: int = 40,
) -> list[str]:
    """The model's greedy replies to ``prompts`` (plain strings are user turns), without a
    progress bar: for trying a model by hand."""
    return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=False).texts


# the code behind a cached answer: this module and the chat encoding it reads
_CODE = memo.source_digest(sys.modules[__name__], _chat)
