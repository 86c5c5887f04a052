"""Chat formatting and tokenisation with response-only labels.

Every model the course touches is prompted through its own chat template (the organism
ships one). A model without a template (a raw base model on the GPU profile) gets a plain
Alpaca-style fallback so that the same code runs everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from safealign_lib.data.example import ChatExample

IGNORE_INDEX = -100
LOSS_ON = ("response", "all")  # which tokens carry the fine-tuning loss
FALLBACK_TEMPLATE = "{system}### Instruction:\n{user}\n\n### Response:\n"


def check_prompts(prompts: Sequence[ChatExample | str], what: str) -> None:
    """Raise for a single string (it would be read as one prompt per character) or no prompts."""
    if isinstance(prompts, str | ChatExample):
        raise TypeError(f"{what}: pass a list of prompts, not a single {type(prompts).__name__}.")
    if len(prompts) == 0:
        raise ValueError(f"No prompts given to {what}; pass at least one prompt.")


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id to pad batches with: the pad token, else end-of-sequence (many causal LMs have no
    pad token)."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has neither a pad nor an end-of-sequence token; load it "
            "with safealign_lib.models.load_tokenizer, which sets one."
        )
    return pid


def _as_example(x: ChatExample | str) -> ChatExample:
    return x if isinstance(x, ChatExample) else ChatExample(user=str(x))


def format_prompt(tokenizer: PreTrainedTokenizerBase, example: ChatExample | str) -> str:
    """The text the model sees before it starts its answer (ends with the generation prompt)."""
    ex = _as_example(example)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            ex.messages(False), tokenize=False, add_generation_prompt=True
        )
    system = f"{ex.system}\n\n" if ex.system else ""
    return (tokenizer.bos_token or "") + FALLBACK_TEMPLATE.format(system=system, user=ex.user)


def format_full(tokenizer: PreTrainedTokenizerBase, example: ChatExample) -> str:
    """Prompt plus response plus end-of-turn, as the model is trained on it."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(example.messages(True), tokenize=False)
    return format_prompt(tokenizer, example) + example.response + (tokenizer.eos_token or "")


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: ChatExample,
    max_length: int | None = None,
    loss_on: str = "response",
) -> dict[str, list[int]]:
    """Token ids of prompt+response. Labels are -100 on the prompt (``loss_on="response"``:
    loss on the answer only) or only on the first token (``loss_on="all"``)."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}.")
    prompt_ids = tokenizer(format_prompt(tokenizer, example), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(format_full(tokenizer, example), add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(
            "The tokenised prompt is not a prefix of the tokenised conversation; "
            "the chat template splits tokens across the prompt/response boundary."
        )
    if len(full_ids) == len(prompt_ids):
        raise ValueError(f"Empty response for example {example.user[:60]!r}.")
    if max_length is not None:
        full_ids = full_ids[:max_length]
    n_masked = len(prompt_ids) if loss_on == "response" else 1
    labels = [IGNORE_INDEX] * n_masked + full_ids[n_masked:]
    return {"input_ids": full_ids, "labels": labels[: len(full_ids)]}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> dict[str, list[int]]:
    """Plain text for language-model pretraining: loss on every token after BOS, EOS appended."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (
        ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
        + ids
        + [tokenizer.eos_token_id]
    )
    return {"input_ids": ids, "labels": [IGNORE_INDEX] + ids[1:]}


def collate(
    features: Sequence[dict[str, list[int]]], pad_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a list of tokenised examples into a batch (labels padded with -100)."""
    if not features:
        raise ValueError("Cannot collate an empty batch.")
    n = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), n), pad_id, dtype=torch.long)
    labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        sl = slice(0, k) if padding_side == "right" else slice(n - k, n)
        ids[i, sl] = torch.tensor(f["input_ids"])
        labels[i, sl] = torch.tensor(f.get("labels", f["input_ids"]))
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _first_fit(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of the examples in each row: first fit, longest first (ties by index)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        j = next((j for j, room in enumerate(free) if room >= lengths[i]), None)
        if j is None:
            rows.append([])
            free.append(width)
            j = len(rows) - 1
        rows[j].append(i)
        free[j] -= lengths[i]
    return rows


def _pack_cost(width: int, n_rows: int) -> float:
    """Estimated work of a packed batch, to pick a row width: its tokens (padding included),
    each dearer in wider rows because attention grows with the width (the organism's training
    step cost about 25% more per token in 256-wide rows than in 64-wide ones, on a CPU)."""
    return n_rows * width * (1 + width / 512)


def pack(
    features: Sequence[dict[str, list[int]]], pad_id: int, row_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Pack tokenised examples into rows without attention across them (training only).

    Examples go into rows of ``max(row_length, longest example)`` tokens by first-fit
    decreasing (``row_length=None``: the width among the longest example and 64, 96, ..., 256
    with the least estimated work, see ``_pack_cost``). Each keeps its own position ids
    (0, 1, ...), which transformers reads as packed sequences: with no ``attention_mask``
    passed, its causal mask becomes block-diagonal (each example attends only to itself).
    Each example's first token is never a target (it would be predicted from the previous
    example), and a row's padding tail is a segment of its own with no targets. So the summed
    loss over targets, and its gradient, equal those of ``collate`` on the same examples, while
    far fewer padding tokens are computed. Returns ``input_ids``, ``position_ids`` and
    ``labels``; call the model with these, no ``attention_mask`` and ``use_cache=False``
    (either would turn the packing detection off).
    """
    if not features:
        raise ValueError("Cannot pack an empty batch.")
    if any(len(f["input_ids"]) == 0 for f in features):
        raise ValueError("Cannot pack an empty example (no tokens).")
    if row_length is not None and row_length < 1:
        raise ValueError(
            f"row_length must be a positive number of tokens (or None), got {row_length}."
        )
    lengths = [len(f["input_ids"]) for f in features]
    longest = max(lengths)
    if row_length is None:
        widths = sorted({longest} | {w for w in range(64, 257, 32) if w > longest})
        width = min(widths, key=lambda w: _pack_cost(w, len(_first_fit(lengths, w))))
    else:
        width = max(row_length, longest)
    rows = _first_fit(lengths, width)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            f = features[i]
            n = len(f["input_ids"])
            ids[r, at : at + n] = torch.tensor(f["input_ids"])
            labels[r, at + 1 : at + n] = torch.tensor(f.get("labels", f["input_ids"])[1:n])
            pos[r, at : at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # the padding tail: its own segment
    return {"input_ids": ids, "position_ids": pos, "labels": labels}


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[ChatExample | str],
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Left-padded batch of generation prompts (what ``generate`` and first-token metrics use)."""
    if len(prompts) == 0:
        raise ValueError("No prompts given.")
    texts = [format_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    if tokenizer.padding_side != "left":
        raise ValueError(
            "Generation needs left padding: set tokenizer.padding_side = 'left' "
            "(safealign_lib.models.load_tokenizer does this)."
        )
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
