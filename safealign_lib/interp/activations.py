"""Activation capture: what each layer of a causal LM writes, at one position per example.

Three *sites* per decoder block ``l``:

- ``resid``: the residual stream after block ``l`` (the block's output);
- ``attn``: the attention output that block ``l`` adds to the stream (``self_attn`` output);
- ``mlp``: the MLP output that block ``l`` adds to the stream (``mlp`` output).

For a Llama block ``resid[l] = resid[l-1] + attn[l] + mlp[l]`` (``resid[-1]`` = embeddings).
Note that ``output_hidden_states`` would give the *normed* stream for the last layer; the hooks
here give the raw stream everywhere.

One vector per example and site is kept, chosen by ``position``:

- ``"last"``: the last prompt token (the generation prompt's final token);
- a negative int ``k``: the prompt token ``k`` from the end (``-1`` = ``"last"``), e.g. the
  post-instruction template tokens of Arditi et al. (see :func:`template_suffix_tokens`);
- ``"prompt_mean"``: the mean over all prompt tokens;
- ``"response_mean"``: the mean over the response tokens (examples must carry a response).

Pooling happens inside the hooks and each batch is moved to CPU float32 at once, so a 7B model
on a GPU needs no more memory than a forward pass plus ``n_layers × n_examples × d`` floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.adapters.hooks import Hook, first_output, forward_hooks
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    format_prompt,
    padding_id,
    tokenize_example,
)
from safealign_lib.models.loading import decoder_layers

SITES = ("resid", "attn", "mlp")
POOLED_POSITIONS = ("last", "prompt_mean", "response_mean")
Position = str | int


@dataclass
class Activations:
    """Captured features: ``features[site]`` has shape ``(len(layers), n_examples, d)``.

    ``labels`` (``int`` array, 1 = positive class such as "harmful") may be ``None`` when the
    examples were not labelled; ``meta`` has one row per example (user text, label, meta keys).
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    meta: pd.DataFrame
    layers: list[int]
    position: Position = "last"

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("Activations need at least one site in `features`.")
        self.layers = [int(layer) for layer in self.layers]
        n = None
        for site, arr in self.features.items():
            if arr.ndim != 3 or arr.shape[0] != len(self.layers):
                raise ValueError(
                    f"features[{site!r}] has shape {arr.shape}; expected "
                    f"(n_layers={len(self.layers)}, n_examples, d)."
                )
            if n is not None and arr.shape[1] != n:
                raise ValueError(
                    f"features[{site!r}] has {arr.shape[1]} examples, other sites {n}."
                )
            n = arr.shape[1]
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(int)
            if self.labels.shape != (n,):
                raise ValueError(
                    f"{len(self.labels)} labels for {n} examples; give one label per example."
                )
        if len(self.meta) != n:
            raise ValueError(f"meta has {len(self.meta)} rows for {n} examples.")

    @property
    def n_examples(self) -> int:
        """Number of examples (rows)."""
        return next(iter(self.features.values())).shape[1]

    @property
    def sites(self) -> list[str]:
        """The captured sites, e.g. ``["resid", "attn", "mlp"]``."""
        return list(self.features)

    def __len__(self) -> int:
        return self.n_examples

    def layer_index(self, layer: int) -> int:
        """Row of ``layer`` in the feature arrays (an error for an uncaptured block)."""
        if layer not in self.layers:
            raise ValueError(
                f"Layer {layer} was not captured; available layers: {self.layers}. "
                "Capture it with capture_activations(..., layers=[...])."
            )
        return self.layers.index(layer)

    def site(self, site: str) -> np.ndarray:
        """The ``(n_layers, n_examples, d)`` array of one site."""
        if site not in self.features:
            raise ValueError(f"Site {site!r} was not captured; available sites: {self.sites}.")
        return self.features[site]

    def get(self, site: str, layer: int) -> np.ndarray:
        """The ``(n_examples, d)`` features of one site at one layer."""
        return self.site(site)[self.layer_index(layer)]

    def subset(self, idx: Sequence[int] | np.ndarray) -> Activations:
        """The same features restricted to the examples ``idx`` (indices or a boolean mask)."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Activations(
            {s: a[:, idx] for s, a in self.features.items()},
            None if self.labels is None else self.labels[idx],
            self.meta.iloc[idx].reset_index(drop=True),
            list(self.layers),
            self.position,
        )

    @classmethod
    def concat(cls, parts: Sequence[Activations]) -> Activations:
        """Stack the examples of several captures (same layers, sites and position)."""
        if not parts:
            raise ValueError("Nothing to concatenate.")
        first = parts[0]
        for p in parts[1:]:
            if p.layers != first.layers or p.sites != first.sites or p.position != first.position:
                raise ValueError(
                    "Cannot concatenate captures with different layers, sites or positions."
                )
        if any(p.labels is None for p in parts) and not all(p.labels is None for p in parts):
            raise ValueError("Some captures have labels and some do not; label all of them.")
        labels = None if first.labels is None else np.concatenate([p.labels for p in parts])
        return cls(
            {s: np.concatenate([p.features[s] for p in parts], axis=1) for s in first.sites},
            labels,
            pd.concat([p.meta for p in parts], ignore_index=True),
            list(first.layers),
            first.position,
        )


def resolve_layers(model: PreTrainedModel, layers: Sequence[int] | int | None) -> list[int]:
    """Block indices as non-negative ints (``None`` = all; negative counts from the end)."""
    n = len(decoder_layers(model))
    if layers is None:
        return list(range(n))
    if isinstance(layers, int | np.integer):
        layers = [int(layers)]
    out = []
    for layer in layers:
        if not -n <= int(layer) < n:
            raise ValueError(
                f"Layer {layer} does not exist: the model has {n} layers (0 to {n - 1})."
            )
        out.append(int(layer) % n)
    if len(set(out)) != len(out):
        raise ValueError(f"Duplicate layers in {list(layers)}.")
    return out


def site_module(model: PreTrainedModel, layer: int, site: str) -> torch.nn.Module:
    """The module whose output is ``site`` of block ``layer`` (block, ``self_attn`` or ``mlp``)."""
    block = decoder_layers(model)[layer]
    if site == "resid":
        return block
    name = {"attn": "self_attn", "mlp": "mlp"}.get(site)
    if name is None:
        raise ValueError(f"Unknown site {site!r}; use one of {SITES}.")
    if not hasattr(block, name):
        raise ValueError(
            f"Block {layer} ({type(block).__name__}) has no `{name}` submodule; "
            "attn/mlp capture needs a Llama-like block. Capture sites=['resid'] only."
        )
    return getattr(block, name)


def check_position(position: Position) -> Position:
    """Validate a position spec (see the module docstring) and return it."""
    if isinstance(position, bool) or not isinstance(position, str | int | np.integer):
        raise ValueError(
            f"position must be one of {POOLED_POSITIONS} or a negative int, not {position!r}."
        )
    if isinstance(position, str):
        if position not in POOLED_POSITIONS:
            raise ValueError(
                f"Unknown position {position!r}; use one of {POOLED_POSITIONS} or a "
                "negative offset from the end of the prompt (-1 = last prompt token)."
            )
        return position
    if position >= 0:
        raise ValueError(
            f"Position offsets count from the end of the prompt: -1 is the last prompt "
            f"token, -2 the one before; got {position}."
        )
    return int(position)


def template_suffix_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The tokens the chat template puts after the user message (the post-instruction tokens).

    Token ``i`` of the returned list sits at offset ``i - len(list)`` from the end of every
    prompt, so ``range(-len(list), 0)`` are the post-instruction positions of Arditi et al.
    """
    marker = "XQZJ"  # a string no template contains, to split the prompt at the user message
    text = format_prompt(tokenizer, marker)
    if marker not in text:
        raise ValueError("The chat template does not contain the user message verbatim.")
    suffix = text.split(marker, 1)[1]
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    if prompt_ids[len(prompt_ids) - len(suffix_ids) :] != suffix_ids:
        raise ValueError(
            "The template suffix tokenises differently inside the prompt; count the "
            "post-instruction offsets by hand from tokenizer.tokenize(format_prompt(...))."
        )
    return tokenizer.convert_ids_to_tokens(suffix_ids)


def _as_example(x: ChatExample | str) -> ChatExample:
    return x if isinstance(x, ChatExample) else ChatExample(user=str(x))


def _resolve_labels(
    examples: Sequence[ChatExample], labels: Sequence | None, label_key: str | None
) -> np.ndarray | None:
    if labels is not None:
        if len(labels) != len(examples):
            raise ValueError(
                f"{len(labels)} labels for {len(examples)} examples; give one label per example."
            )
        return np.asarray(labels).astype(int)
    if label_key and all(label_key in ex.meta for ex in examples):
        return np.asarray([int(ex.meta[label_key]) for ex in examples])
    return None


def _encode_batch(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[ChatExample], position: Position
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded batch and the (B, T) pooling weights of ``position`` (None for offsets)."""
    pad_id = padding_id(tokenizer)
    if position == "response_mean":
        missing = [i for i, ex in enumerate(examples) if ex.response is None]
        if missing:
            raise ValueError(
                f"position='response_mean' needs examples with a response; example(s) "
                f"{missing[:5]} have none. Use position='last' for prompts only."
            )
        feats = [tokenize_example(tokenizer, ex) for ex in examples]
    else:
        # Prompt positions do not see the response (causal attention), so the prompt suffices.
        feats = [
            {
                "input_ids": tokenizer(format_prompt(tokenizer, ex), add_special_tokens=False)[
                    "input_ids"
                ]
            }
            for ex in examples
        ]
    batch = collate(feats, pad_id, padding_side="left")
    if position == "response_mean":
        weights = (batch["labels"] != IGNORE_INDEX).float()
    else:
        weights = batch["attention_mask"].float()
        if isinstance(position, int):
            short = (batch["attention_mask"].sum(1) < -position).nonzero().flatten().tolist()
            if short:
                raise ValueError(
                    f"Offset {position} reaches before the start of prompt(s) {short[:5]} "
                    "of this batch; use a smaller offset."
                )
    return batch, weights


def _pool(x: torch.Tensor, position: Position, weights: torch.Tensor) -> torch.Tensor:
    x = x.float()
    if position == "last":
        return x[:, -1]  # left padding: the last prompt token is the last column
    if isinstance(position, int):
        return x[:, position]
    w = weights.to(x.device)
    return (x * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)


@worklog.timed("activations")
def capture_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample | str],
    *,
    labels: Sequence[int | bool] | None = None,
    label_key: str | None = "harmful",
    sites: Sequence[str] = SITES,
    layers: Sequence[int] | int | None = None,
    position: Position = "last",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "activations",
) -> Activations:
    """Run ``examples`` through ``model`` and keep, per layer and site, one vector per example.

    ``labels`` default to ``int(ex.meta[label_key])`` when every example has that key (the course
    data marks ``{"harmful": True}``). Works through a peft wrapper and on any device; the model
    is run in eval mode under ``torch.no_grad`` and its mode is restored afterwards.
    """
    examples = [_as_example(e) for e in examples]
    if not examples:
        raise ValueError("No examples given.")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1.")
    position = check_position(position)
    sites = list(sites)
    if not sites:
        raise ValueError(f"No sites given; use some of {SITES}.")
    for s in sites:
        if s not in SITES:
            raise ValueError(f"Unknown site {s!r}; use one of {SITES}.")
    layer_ids = resolve_layers(model, layers)
    y = _resolve_labels(examples, labels, label_key)
    device = next(model.parameters()).device
    n = len(examples)
    out: dict[str, np.ndarray] = {}
    pooled: dict[tuple[str, int], torch.Tensor] = {}
    state: dict = {}

    def make_hook(site: str, row: int) -> Hook:
        def hook(_module, _args, output):
            pooled[(site, row)] = _pool(first_output(output), state["position"], state["weights"])

        return hook

    pairs = [
        (site_module(model, layer, s), make_hook(s, row))
        for s in sites
        for row, layer in enumerate(layer_ids)
    ]
    was_training = model.training
    model.eval()
    n_tokens = []
    try:
        with forward_hooks(pairs), torch.no_grad():
            for start in tqdm(
                range(0, n, batch_size), desc=desc, disable=not progress, leave=False
            ):
                chunk = examples[start : start + batch_size]
                batch, weights = _encode_batch(tokenizer, chunk, position)
                mask = batch["attention_mask"]
                n_tokens += mask.sum(1).tolist()
                state.update(position=position, weights=weights)
                # Explicit position ids keep left-padded rows identical to unpadded ones even for
                # models with absolute position embeddings.
                pos_ids = (mask.cumsum(1) - 1).clamp(min=0)
                pooled.clear()
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=mask.to(device),
                    position_ids=pos_ids.to(device),
                    use_cache=False,
                )
                for (s, row), v in pooled.items():
                    if s not in out:
                        out[s] = np.empty((len(layer_ids), n, v.shape[-1]), dtype=np.float32)
                    out[s][row, start : start + len(chunk)] = v.cpu().numpy()
    finally:
        model.train(was_training)
    meta = pd.DataFrame(
        [{**ex.meta, "user": ex.user, "has_response": ex.response is not None} for ex in examples]
    )
    meta["n_tokens"] = n_tokens
    if y is not None:
        meta["label"] = y
    return Activations({s: out[s] for s in sites}, y, meta, layer_ids, position)
