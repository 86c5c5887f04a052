"""How deep a fine-tune's change goes: per-position divergence over the first answer tokens.

Qi et al. (2024, "Safety alignment should be made more than just a few tokens deep") found
that alignment mostly shapes the first few tokens of an answer. A fine-tune that erodes it
then needs to change only those: teacher-force the aligned model's own answer and compare,
position by position, the next-token distributions of the aligned model and the fine-tune.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    padding_id,
    tokenize_example,
)


def _answer_logprobs(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], n_positions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities over the vocabulary at the positions that predict the first
    ``n_positions`` answer tokens, those tokens, and which (row, position) exist."""
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits.float()
    labels = batch["labels"].to(device)
    answer = labels != IGNORE_INDEX
    first = answer.int().argmax(dim=1)  # first answer position per row
    idx = (first - 1).unsqueeze(1) + torch.arange(n_positions, device=device).unsqueeze(0)
    valid = idx + 1 < labels.shape[1]
    idx = idx.clamp(max=labels.shape[1] - 2)
    valid &= answer.gather(1, idx + 1)
    logp = logits.log_softmax(-1).gather(1, idx.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    tokens = labels.gather(1, idx + 1).clamp(min=0)  # invalid positions: any id, masked later
    return logp, tokens, valid


@worklog.timed("forward")
def answer_position_divergence(
    reference: PreTrainedModel,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    n_positions: int = 8,
    batch_size: int = 16,
    max_length: int = 256,
) -> pd.DataFrame:
    """Per answer position i (0 = the first answer token), teacher-forced on ``examples``'
    responses (typically the reference model's own answers):

    - ``kl``: KL(p_reference ‖ p_model) of the next-token distributions, mean over examples;
    - ``token_prob_reference`` / ``token_prob_model``: the probability each model gives the
      response's own token at that position, mean over examples;
    - ``token``: the responses' most common token at that position, and ``top_token_model``:
      the token the model most often ranks first there (decoded), to read what a spike is made
      of (a new word, or the fine-tune's own format at that position).

    Rows shorter than ``i + 1`` answer tokens are left out of position i (``n`` counts them).
    """
    if n_positions < 1:
        raise ValueError(f"n_positions must be >= 1, got {n_positions}.")
    if not examples or any(ex.response is None for ex in examples):
        raise ValueError(
            "Give examples with responses (e.g. the reference model's own answers): the "
            "divergence is measured teacher-forced on them."
        )
    pad = padding_id(tokenizer)
    feats = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    sums = np.zeros((3, n_positions))
    counts = np.zeros(n_positions)
    seen: list[list[Counter]] = [[Counter() for _ in range(n_positions)] for _ in range(2)]
    for i in range(0, len(feats), batch_size):
        batch = collate(feats[i : i + batch_size], pad)
        ref_lp, tokens, valid = _answer_logprobs(reference, batch, n_positions)
        mod_lp, _, _ = _answer_logprobs(model, batch, n_positions)
        mod_lp = mod_lp.to(ref_lp.device)
        kl = (ref_lp.exp() * (ref_lp - mod_lp)).sum(-1)
        tok = tokens.unsqueeze(-1)
        probs = [lp.gather(2, tok).squeeze(-1).exp() for lp in (ref_lp, mod_lp)]
        stats = [kl, *probs]
        v = valid.float()
        for j, s in enumerate(stats):
            sums[j] += (s * v).sum(0).cpu().numpy()
        counts += v.sum(0).cpu().numpy()
        for counter, ids in zip(seen, (tokens, mod_lp.argmax(-1)), strict=True):
            for row, pos in valid.nonzero().tolist():
                counter[pos][int(ids[row, pos])] += 1
    mean = sums / np.maximum(counts, 1)
    common = [
        [tokenizer.decode([c.most_common(1)[0][0]]) if c else "" for c in counters]
        for counters in seen
    ]
    return pd.DataFrame(
        {
            "position": np.arange(n_positions),
            "kl": mean[0],
            "token_prob_reference": mean[1],
            "token_prob_model": mean[2],
            "token": common[0],
            "top_token_model": common[1],
            "n": counts.astype(int),
        }
    )
