"""Chat formatting and tokenisation with response-only labels.

Every model the course touches is prompted through its own chat template (the organism
ships one). A model without a template (a raw base model on the GPU profile) gets a plain
Alpaca-style fallback so that the same code runs everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
FALLBACK_TEMPLATE = "{system}### Instruction:\n{user}\n\n### Response:\n"


@dataclass
class ChatExample:
    """One conversation turn: an optional system prompt, a user message and (for training)
    the assistant's response. ``meta`` carries labels such as ``{"harmful": True}``."""

    user: str
    response: str | None = None
    system: str | None = None
    meta: dict = field(default_factory=dict)

    def messages(self, with_response: bool) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        msgs.append({"role": "user", "content": self.user})
        if with_response:
            if self.response is None:
                raise ValueError("This example has no response; it can be used for evaluation only.")
            msgs.append({"role": "assistant", "content": self.response})
        return msgs


def _as_example(x: ChatExample | str) -> ChatExample:
    return x if isinstance(x, ChatExample) else ChatExample(user=str(x))


def format_prompt(tokenizer: PreTrainedTokenizerBase, example: ChatExample | str) -> str:
    """The text the model sees before it starts its answer (ends with the generation prompt)."""
    ex = _as_example(example)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(ex.messages(False), tokenize=False, add_generation_prompt=True)
    system = f"{ex.system}\n\n" if ex.system else ""
    return (tokenizer.bos_token or "") + FALLBACK_TEMPLATE.format(system=system, user=ex.user)


def format_full(tokenizer: PreTrainedTokenizerBase, example: ChatExample) -> str:
    """Prompt plus response plus end-of-turn, as the model is trained on it."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(example.messages(True), tokenize=False)
    return format_prompt(tokenizer, example) + example.response + (tokenizer.eos_token or "")


def tokenize_example(tokenizer: PreTrainedTokenizerBase, example: ChatExample,
                     max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids of prompt+response, with labels set to -100 on the prompt (loss on the answer only)."""
    prompt_ids = tokenizer(format_prompt(tokenizer, example), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(format_full(tokenizer, example), add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("The tokenised prompt is not a prefix of the tokenised conversation; "
                         "the chat template splits tokens across the prompt/response boundary.")
    if len(full_ids) == len(prompt_ids):
        raise ValueError(f"Empty response for example {example.user[:60]!r}.")
    if max_length is not None:
        full_ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return {"input_ids": full_ids, "labels": labels[: len(full_ids)]}


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> dict[str, list[int]]:
    """Plain text for language-model pretraining: loss on every token after BOS, EOS appended."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": [IGNORE_INDEX] + ids[1:]}


def collate(features: Sequence[dict[str, list[int]]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
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


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[ChatExample | str],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Left-padded batch of generation prompts (what ``generate`` and first-token metrics use)."""
    if len(prompts) == 0:
        raise ValueError("No prompts given.")
    texts = [format_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    if tokenizer.padding_side != "left":
        raise ValueError("Generation needs left padding: set tokenizer.padding_side = 'left' "
                         "(safealign_lib.models.load_tokenizer does this).")
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
