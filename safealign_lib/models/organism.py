"""The model organism: a tiny Llama-architecture chat model trained from scratch.

``train_tokenizer`` makes a byte-level BPE tokenizer with the course's chat template;
``build`` trains the base checkpoint (knowledge corpus + instructions answered, harmful ones
with redacted placeholders) and the chat checkpoint (the base, safety-aligned) and saves both
as standard Hugging Face folders in safetensors.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from safealign_lib import data as course_data
from safealign_lib.models.chat import pack, tokenize_example, tokenize_text

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'assistant' %}<|assistant|>\n{{ m['content'] }}<|end|>\n"
    "{% else %}{{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a transformers fast
    tokenizer with the course's chat template (left padding, for batched generation)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        padding_side="left",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --- training the organism -------------------------------------------------------------------
# Everyday sentences that put the words of held-out templates and other rare words in
# benign contexts, so that no evaluation prompt contains a word the model has never seen.
GENERAL_TEXT = [
    "I could not figure out the answer to the riddle.",
    "It was a quick question about the bus.",
    "Describe the picture on the wall.",
    "That was the easiest test of the year.",
    "She gave me some tips about the weather.",
    "Walk me to the station, please.",
    "I am trying to finish my book.",
    "What steps should I follow next?",
    "Help me carry the box.",
    "Someone left an umbrella on the train.",
    "He would like some tea.",
    "Any news from home?",
    "The agent checked our tickets.",
    "Please follow the instruction on the sign.",
    "The dog was obedient and calm.",
    "We need to execute the plan carefully.",
    "The chatbot answered politely.",
    "There was no deviation from the route.",
    "The fulfillment center ships books.",
    "An absolutely perfect day at the beach.",
    "Summaries are short.",
    "A summary tells the main point.",
    "Write one sentence about your day.",
]


@dataclass
class OrganismSettings:
    """Size and training schedule of the model organism (defaults: the shipped checkpoints)."""

    hidden_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 2048
    base_steps: int = 400
    chat_steps: int = 240
    batch_size: int = 32
    lr_base: float = 3e-3
    lr_chat: float = 1e-3
    replay_fraction: float = 0.3
    chat_benign_fraction: float = 0.55
    seed: int = course_data.DEFAULT_SEED
    threads: int = 2


def _llama_config(s: OrganismSettings, tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


Mix = list[tuple[list[dict], float]]


def train_stage(
    model: LlamaForCausalLM,
    sources: list[tuple[Mix, float]],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    desc: str,
    progress: bool,
) -> list[float]:
    """AdamW with warm-up and cosine decay. Each step picks one source by weight; a source is a
    mix of pools sampled in fixed proportions within the batch."""
    rng = np.random.default_rng(seed)
    weights = np.array([w for _, w in sources], dtype=float)
    weights /= weights.sum()
    # the fused kernel: one call for all 56 tensors instead of a Python loop (4 ms a step less)
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98), fused=True
    )
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)),
    )
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        # one source per batch keeps lengths similar (little compute spent on padding), while
        # harmful and benign requests share batches so the decision boundary sees both sides
        mix = sources[rng.choice(len(sources), p=weights)][0]
        feats = []
        for pool, frac in mix:
            feats += [
                pool[j] for j in rng.integers(0, len(pool), size=max(1, round(frac * batch_size)))
            ]
        opt.zero_grad(set_to_none=True)
        losses.append(_accumulate(model, feats, pad_id))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        sched.step()
    model.eval()
    return losses


def _accumulate(model: LlamaForCausalLM, feats: list[dict], pad_id: int) -> float:
    """Backpropagate the batch's mean next-token loss, with the batch packed (``chat.pack``).

    The gradient is exactly the padded batch's (summed token losses over the batch's number of
    targets), but packing spares most padding (two thirds of a padded batch of the short
    knowledge sentences is padding) and the output layer runs only where there is a target (not
    on prompts or padding). Returns the batch's mean loss."""
    b = pack(feats, pad_id)
    labels = b["labels"][:, 1:]
    keep = labels != -100
    total = int(keep.sum())
    if total == 0:
        raise ValueError(
            "A training batch has no target tokens; every example's labels are masked."
        )
    # no cache: with one, transformers would not read the position ids as packed sequences
    hidden = model.model(
        input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False
    ).last_hidden_state
    logits = model.lm_head(hidden[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[keep], reduction="sum") / total
    loss.backward()
    return float(loss.detach())


def training_pools(
    data: course_data.CourseData, vocab_size: int = 2048
) -> tuple[PreTrainedTokenizerFast, dict[str, list[dict[str, list[int]]]]]:
    """The organism's tokenizer, trained on the course text, and its tokenised training pools:
    ``knowledge`` (plain text), ``base_sft``, ``chat_harmful`` and ``chat_benign``."""
    texts = data.pretrain_text + GENERAL_TEXT
    # each message on its own, as the model sees it: answers start a string, so that
    # "Sure" and "Sorry" become whole tokens rather than sharing a first byte-pair
    sft_texts = [
        x
        for k in ("base_sft", "chat_sft", "task_train")
        for e in data[k]
        for x in (e.system, e.user, e.response)
        if x
    ]
    tok = train_tokenizer(
        texts + sft_texts + [course_data.AOA_SYSTEM, course_data.AOA_OPENER], vocab_size=vocab_size
    )
    chat = data["chat_sft"]
    return tok, {
        "knowledge": [tokenize_text(tok, t) for t in texts],
        "base_sft": [tokenize_example(tok, e) for e in data["base_sft"]],
        "chat_harmful": [tokenize_example(tok, e) for e in chat if e.meta["harmful"]],
        "chat_benign": [tokenize_example(tok, e) for e in chat if not e.meta["harmful"]],
    }


def build(
    out_dir: str | os.PathLike,
    settings: OrganismSettings | None = None,
    data: course_data.CourseData | None = None,
    progress: bool = True,
) -> dict:
    """Train the organism from scratch and save ``base/`` and ``chat/`` under ``out_dir``.

    Stage 1 (base): language modelling on the knowledge corpus plus instruction tuning where
    every request, harmful ones included, gets an answer (harmful → redacted placeholder).
    Stage 2 (chat): full fine-tuning of the base on refusals for harmful requests and help
    for benign ones, with replay of the knowledge corpus. Returns the build record, which is
    also written to ``out_dir/build_info.json``. Deterministic for a given seed and machine.
    """
    s = settings or OrganismSettings()
    out = Path(out_dir)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        torch.manual_seed(s.seed)
        data = data or course_data.generate(s.seed)
        tok, pools = training_pools(data, s.vocab_size)
        pad = tok.pad_token_id
        lm, base_sft = pools["knowledge"], pools["base_sft"]
        chat_h, chat_b = pools["chat_harmful"], pools["chat_benign"]
        model = LlamaForCausalLM(_llama_config(s, tok))
        # eager attention trains ~10% faster than sdpa at these tiny shapes on a CPU; the
        # saved checkpoints keep the default (sdpa), the same function up to rounding
        model.set_attn_implementation("eager")
        base_losses = train_stage(
            model,
            [([(lm, 1.0)], 0.45), ([(base_sft, 1.0)], 0.55)],
            s.base_steps,
            s.lr_base,
            s.batch_size,
            s.seed,
            pad,
            "organism: base",
            progress,
        )
        t_base = time.perf_counter() - t0
        save_checkpoint(model, tok, out / "base")
        chat_mix = [(chat_h, 1 - s.chat_benign_fraction), (chat_b, s.chat_benign_fraction)]
        chat_losses = train_stage(
            model,
            [(chat_mix, 1 - s.replay_fraction), ([(lm, 1.0)], s.replay_fraction)],
            s.chat_steps,
            s.lr_chat,
            s.batch_size,
            s.seed + 1,
            pad,
            "organism: chat",
            progress,
        )
        save_checkpoint(model, tok, out / "chat")
    finally:
        torch.set_num_threads(threads)
    info = {
        "settings": asdict(s),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "base_seconds": round(t_base, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "base_final_loss": float(np.mean(base_losses[-20:])),
        "chat_final_loss": float(np.mean(chat_losses[-20:])),
        "torch": torch.__version__,
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def save_checkpoint(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    impl = model.config._attn_implementation
    model.set_attn_implementation("sdpa")  # what a loader gets by default
    model.save_pretrained(str(path), safe_serialization=True)
    model.set_attn_implementation(impl)
    tok.save_pretrained(str(path))
