"""Which linear modules SaLoRA wraps, and their input features (X_h on harmful prompts, X_t on
task data) collected with forward hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from safealign_lib import worklog
from safealign_lib.adapters.lora_io import PEFT_PREFIX
from safealign_lib.methods.salora.config import STORES
from safealign_lib.models.chat import (
    IGNORE_INDEX,
    ChatExample,
    collate,
    padding_id,
    tokenize_example,
)
from safealign_lib.models.loading import decoder_layers

# --- finding the target layers ----------------------------------------------------------------


def _canonical(name: str) -> str:
    """A layer's name in the plain HF model, also when ``name`` comes from a peft wrapper."""
    return name.removeprefix(PEFT_PREFIX).removesuffix(".base_layer")


def _target_linears(
    model: nn.Module, target_modules: Sequence[str], layers: Iterable[int] | None = None
) -> dict[str, nn.Linear]:
    """The nn.Linear layers whose last name component is in ``target_modules``, keyed by their
    name in the plain model (inside a peft model: the wrapped ``base_layer``)."""
    if isinstance(target_modules, str) or not target_modules:
        raise ValueError(
            f"target_modules must be a non-empty list of names such as ['q_proj', 'v_proj'], "
            f"got {target_modules!r}."
        )
    allowed, idx = None, None
    if layers is not None:
        blocks = decoder_layers(model)
        idx = list(layers)
        bad = [i for i in idx if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(
                f"Decoder layer index(es) {bad} out of range: the model has {len(blocks)} layers."
            )
        allowed = {id(m) for i in idx for m in blocks[i].modules()}
    found: dict[str, nn.Linear] = {}
    available = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or ".lora_" in name:
            continue
        cname = _canonical(name)
        leaf = cname.rsplit(".", 1)[-1]
        available.add(leaf)
        if leaf in target_modules and (allowed is None or id(mod) in allowed):
            found[cname] = mod
    missing = [t for t in target_modules if t not in available]
    if missing:
        raise ValueError(
            f"Target module(s) {missing} not found in {type(model).__name__}; "
            f"linear layers available: {sorted(available)}."
        )
    if not found:
        raise ValueError(f"No {list(target_modules)} layers in decoder layers {idx}.")
    return found


def _feature_linears(model: nn.Module, feats: Mapping[str, LayerFeatures]) -> dict[str, nn.Linear]:
    """The nn.Linear of every layer in ``feats`` (collected from ``model``), in their order."""
    linears = _target_linears(model, sorted({n.rsplit(".", 1)[-1] for n in feats}))
    for name in feats:
        if name not in linears:
            raise ValueError(f"Layer {name!r} of the features is not in {type(model).__name__}.")
    return {n: linears[n] for n in feats}


def _outer_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    """For each canonical layer name, the module whose output is the layer's full output
    (peft's LoRA wrapper when there is one, else the nn.Linear itself)."""
    wanted = set(names)
    out = {}
    for name, mod in model.named_modules():
        if not name.endswith(".base_layer") and _canonical(name) in wanted:
            out[_canonical(name)] = mod
    missing = wanted - set(out)
    if missing:
        raise ValueError(
            f"Layers {sorted(missing)} not found in {type(model).__name__}; was the safety "
            "module built for another model?"
        )
    return out


# --- feature collection ------------------------------------------------------------------------


@dataclass
class LayerFeatures:
    """What :func:`collect_layer_inputs` keeps for one target layer at the response tokens.

    ``store="features"``: ``x`` (n_tokens, d_in), float32 on CPU, one row per response token
    (the matrix X of the paper is ``x.T``). ``store="gram"``: ``gram`` (d_out, d_out), float64,
    Σ (W x)(W x)ᵀ with W the layer's weight at collection time.
    """

    name: str
    n_tokens: int
    d_in: int
    d_out: int
    x: Tensor | None = None
    gram: Tensor | None = None

    @property
    def store(self) -> str:
        return "features" if self.x is not None else "gram"

    def check(self) -> None:
        """Raise on missing, misshapen or non-finite features."""
        data = self.x if self.x is not None else self.gram
        if data is None:
            raise ValueError(f"LayerFeatures {self.name!r} hold neither `x` nor `gram`.")
        if self.n_tokens < 1:
            raise ValueError(
                f"No response tokens were collected for layer {self.name!r}; the examples "
                "need non-empty responses."
            )
        expected = (self.n_tokens, self.d_in) if self.x is not None else (self.d_out, self.d_out)
        if tuple(data.shape) != expected:
            raise ValueError(
                f"Features of layer {self.name!r} have shape {tuple(data.shape)}, "
                f"expected {expected}."
            )
        # row chunks: a whole-matrix isfinite would allocate n_tokens x d_in bools (134 MB at 7B)
        rows = max(1, 2**20 // max(1, data.shape[1]))
        if not all(bool(torch.isfinite(chunk).all()) for chunk in data.split(rows)):
            raise FloatingPointError(
                f"NaN/inf in the features of layer {self.name!r}: the model produced "
                "non-finite activations (check its weights, or run it in float32 "
                "instead of float16)."
            )


def _feature_mask(labels: Tensor, prompt_positions: int) -> Tensor:
    """The response tokens (labels ≠ −100), widened by the last ``prompt_positions`` prompt
    positions of each row (the ones right before its first response token)."""
    mask = labels != IGNORE_INDEX
    if prompt_positions:
        first = mask.int().argmax(dim=1, keepdim=True)  # first response position per row
        pos = torch.arange(labels.shape[1]).unsqueeze(0)
        mask = mask | ((pos < first) & (pos >= first - prompt_positions))
    return mask


@worklog.timed("activations")
def collect_layer_inputs(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChatExample],
    target_modules: Sequence[str],
    *,
    store: str = "features",
    layers: Iterable[int] | None = None,
    n_samples: int | None = None,
    batch_size: int = 8,
    max_length: int = 256,
    prompt_positions: int = 0,
) -> dict[str, LayerFeatures]:
    """Inputs of every target linear layer at the response tokens of ``examples``.

    ``prompt_positions`` > 0 also keeps the last that many prompt positions of each example
    (an ablation: the paper's X_h leaves them out, although the last one is where the first
    answer token, refusal or compliance, is decided).

    Streams ``batch_size`` examples at a time through forward pre-hooks on the target
    ``nn.Linear`` modules (removed afterwards, also on error) and keeps per layer either the
    feature rows (``store="features"``) or only the Gram of W·X (``store="gram"``; see the
    module docstring). ``layers`` restricts collection to some decoder layers (one group at a
    time); ``n_samples`` uses the first n examples. Returns ``{layer name: LayerFeatures}``.
    """
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}.")
    examples = list(examples)
    if not examples:
        raise ValueError(
            "No examples given: the safety (or task) set is empty. Pass ChatExamples with "
            "responses, e.g. harmful prompts paired with refusals."
        )
    if n_samples is not None:
        if not 1 <= n_samples <= len(examples):
            raise ValueError(
                f"n_samples={n_samples} but {len(examples)} examples are available; "
                f"choose 1 <= n_samples <= {len(examples)}."
            )
        examples = examples[:n_samples]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if prompt_positions < 0:
        raise ValueError(f"prompt_positions must be >= 0, got {prompt_positions}.")
    linears = _target_linears(model, target_modules, layers)
    tokenized = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    pad_id = padding_id(tokenizer)
    device = next(model.parameters()).device

    rows: dict[str, list[Tensor]] = {n: [] for n in linears}
    grams: dict[str, Tensor] = {}
    counts = dict.fromkeys(linears, 0)
    current: dict[str, Tensor] = {}  # the response-token mask of the batch being run

    def make_hook(name: str) -> Callable:
        def hook(mod: nn.Linear, args: tuple) -> None:
            x = args[0][current["mask"]]  # (n_response_tokens, d_in)
            if not torch.isfinite(x).all():
                raise FloatingPointError(
                    f"NaN/inf in the inputs of layer {name!r}: the model produced "
                    "non-finite activations (check its weights, or run it in float32)."
                )
            counts[name] += x.shape[0]
            if store == "features":
                rows[name].append(x.detach().float().cpu())
            else:
                z = F.linear(x, mod.weight).double()
                grams[name] = grams[name] + z.T @ z if name in grams else z.T @ z

        return hook

    was_training = model.training
    model.eval()
    handles = [lin.register_forward_pre_hook(make_hook(n)) for n, lin in linears.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(tokenized), batch_size):
                batch = collate(tokenized[i : i + batch_size], pad_id)
                current["mask"] = _feature_mask(batch["labels"], prompt_positions).to(device)
                model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                )
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    out = {}
    for name, lin in linears.items():
        d_out, d_in = lin.weight.shape
        if store == "features":
            x = torch.cat(rows.pop(name)) if rows[name] else torch.zeros(0, d_in)
            out[name] = LayerFeatures(name, counts[name], d_in, d_out, x=x)
        else:
            gram = (
                grams.pop(name).cpu()
                if name in grams
                else torch.zeros(d_out, d_out, dtype=torch.float64)
            )
            out[name] = LayerFeatures(name, counts[name], d_in, d_out, gram=gram)
    return out
