"""The refusal direction (Arditi et al. 2024): find it, remove it, add it, bake it into weights.

- :func:`refusal_directions`: per layer, ``r = mean(harmful) − mean(harmless)`` of the residual
  stream at one position (from :func:`~safealign_lib.interp.activations.capture_activations`).
- :func:`ablate_direction`: ``x ← x − r̂ r̂ᵀ x`` on everything written into the residual stream
  (embeddings, each block's attention and MLP outputs), so no layer or position ever carries
  the direction. A context manager; hooks are removed on exit, also on error.
- :func:`add_direction`: ``x ← x + α·r`` on the residual stream after one block (all positions,
  or only the last prompt token).
- :func:`affine_ablate_direction`: ``x ← x − r̂ (r̂ᵀx − c)`` after one block: the projection is set
  to a reference ``c`` (the harmless mean) instead of 0 — affine concept editing (Marshall,
  Scherlis & Belrose 2024), for models where 0 is not a neutral value along ``r̂``.
- :func:`orthogonalize_weights`: the same ablation as a weight edit, ``W_out ← W_out − r̂ r̂ᵀ W_out``
  for the embedding matrix, every ``o_proj`` and every ``down_proj``.
- :func:`select_direction`: choose the layer by validation, as in the paper;
  :func:`compare_ablations` does it with zero and with affine ablation, side by side.
- :func:`intervention_runs` / :func:`intervention_table`: refusal with no intervention, zero
  ablation and affine ablation; :func:`choose_alpha`: the addition coefficient by validation.
- :func:`direction_cosines` / :func:`cosine_matrix`: compare directions of two models.

Layer ``l`` here means "the residual stream after block ``l``", the site ``resid`` of
:mod:`safealign_lib.interp.activations`; addition at layer ``l`` acts exactly where ``r_l``
was measured.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from safealign_lib.adapters.hooks import first_output, forward_hooks, replace_first_output
from safealign_lib.interp.activations import Activations, Position, resolve_layers
from safealign_lib.models.loading import decoder_layers

ScoreFn = Callable[[PreTrainedModel, Sequence], float | np.ndarray]


@dataclass
class RefusalDirections:
    """Difference-in-means directions: ``vectors[i]`` is ``r`` for ``layers[i]`` (unnormalised)."""

    vectors: np.ndarray
    layers: list[int]
    position: Position = "last"
    site: str = "resid"
    harmless_mean: np.ndarray | None = (
        None  # (n_layers, d): the harmless class mean, for references
    )

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        self.layers = [int(layer) for layer in self.layers]
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(
                f"vectors has shape {self.vectors.shape}; "
                f"expected (n_layers={len(self.layers)}, d)."
            )
        if self.harmless_mean is not None:
            self.harmless_mean = np.asarray(self.harmless_mean, dtype=np.float32)
            if self.harmless_mean.shape != self.vectors.shape:
                raise ValueError(
                    f"harmless_mean has shape {self.harmless_mean.shape}; "
                    f"expected {self.vectors.shape}."
                )

    def __getitem__(self, layer: int) -> np.ndarray:
        """The (unnormalised) direction ``r`` of ``layer``."""
        if layer not in self.layers:
            raise ValueError(f"No direction for layer {layer}; available layers: {self.layers}.")
        return self.vectors[self.layers.index(layer)]

    def unit(self, layer: int) -> np.ndarray:
        """``r̂ = r / ‖r‖`` of ``layer``."""
        r = self[layer]
        return r / np.linalg.norm(r)

    def reference(self, layer: int) -> float:
        """The harmless mean's projection onto ``r̂`` at ``layer``: the value
        :func:`affine_ablate_direction` sets the projection to."""
        if self.harmless_mean is None:
            raise ValueError(
                "These directions carry no harmless mean; build them with refusal_directions(...) "
                "or pass harmless_mean=."
            )
        self[layer]  # clear error for a missing layer
        return float(self.harmless_mean[self.layers.index(layer)] @ self.unit(layer))

    def project(
        self, acts: Activations, layer: int, idx: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Each example's projection ``r̂ᵀx`` onto the direction of ``layer`` (features of this
        direction's site in ``acts``, optionally only the examples ``idx``)."""
        x = acts.get(self.site, layer)
        return (x if idx is None else x[np.asarray(idx)]) @ self.unit(layer)

    @property
    def norms(self) -> pd.Series:
        """``‖r‖`` per layer (how far apart the class means are)."""
        return pd.Series(
            np.linalg.norm(self.vectors, axis=1),
            index=pd.Index(self.layers, name="layer"),
            name="norm",
        )


def refusal_directions(
    harmful: Activations,
    harmless: Activations | None = None,
    *,
    site: str = "resid",
    harmful_label: int = 1,
) -> RefusalDirections:
    """``r = mean(harmful) − mean(harmless)`` per captured layer.

    Either one labelled capture (``harmful`` holds both classes, label ``harmful_label`` = harmful)
    or two captures, one per class, of the same layers and position.
    """
    if harmless is None:
        if harmful.labels is None:
            raise ValueError("Pass two captures (harmful, harmless), or one capture with labels.")
        pos, neg = harmful.labels == harmful_label, harmful.labels != harmful_label
        A, B = harmful.site(site)[:, pos], harmful.site(site)[:, neg]
    else:
        if harmless.layers != harmful.layers or harmless.position != harmful.position:
            raise ValueError(
                "The harmful and harmless captures differ in layers or position; capture "
                "both with the same layers= and position=."
            )
        A, B = harmful.site(site), harmless.site(site)
        if A.shape[2] != B.shape[2]:
            raise ValueError(
                f"Feature widths differ: harmful d={A.shape[2]}, harmless d={B.shape[2]}."
            )
    for name, arr in (("harmful", A), ("harmless", B)):
        if arr.shape[1] == 0:
            raise ValueError(f"The {name} class is empty; capture examples of both classes.")
    vectors = A.astype(np.float64).mean(1) - B.astype(np.float64).mean(1)
    return RefusalDirections(
        vectors,
        list(harmful.layers),
        harmful.position,
        site,
        harmless_mean=B.astype(np.float64).mean(1),
    )


def _hidden_size(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().weight.shape[1]


def _unit(direction: np.ndarray | torch.Tensor, d: int, normalise: bool = True) -> torch.Tensor:
    r = torch.as_tensor(
        np.asarray(direction, dtype=np.float32)
        if isinstance(direction, np.ndarray)
        else direction.detach().float().cpu()
    )
    if r.shape != (d,):
        raise ValueError(
            f"The direction has shape {tuple(r.shape)}, but the model's hidden size is {d}; "
            "use a direction of this model family (e.g. dirs[layer])."
        )
    norm = r.norm()
    if not torch.isfinite(norm) or (normalise and norm == 0):
        raise ValueError(
            "The direction is zero or not finite; the class means are identical at this layer."
        )
    return r / norm if normalise else r


class _Cast:
    """A direction cached per (dtype, device), so hooks never re-copy it to the GPU."""

    def __init__(self, r: torch.Tensor) -> None:
        self.r, self.cache = r, {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self.cache:
            self.cache[key] = self.r.to(dtype=x.dtype, device=x.device)
        return self.cache[key]


def _project_out(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x - (x @ u)[..., None] * u


def _writers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The modules whose outputs are added into the residual stream (embeddings, attn, mlp)."""
    mods = [model.get_input_embeddings()]
    for i, block in enumerate(decoder_layers(model)):
        for name in ("self_attn", "mlp"):
            if not hasattr(block, name):
                raise ValueError(
                    f"Block {i} ({type(block).__name__}) has no `{name}`; ablation needs a "
                    "Llama-like block."
                )
            mods.append(getattr(block, name))
    return mods


@contextmanager
def ablate_direction(
    model: PreTrainedModel, direction: np.ndarray | torch.Tensor
) -> Iterator[PreTrainedModel]:
    """Inside the ``with`` block, remove ``r̂`` from everything written into the residual stream
    (so from every layer and position, also while generating). Hooks go away on exit."""
    u = _Cast(_unit(direction, _hidden_size(model)))

    def hook(_module, _args, output):
        x = first_output(output)
        return replace_first_output(output, _project_out(x, u.like(x)))

    with forward_hooks([(m, hook) for m in _writers(model)]):
        yield model


POSITIONS = ("all", "last")


def _edit(
    x: torch.Tensor, positions: str, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn`` applied to every position of ``x`` (B, T, d), or only to the last prompt token.

    ``"last"``: in a forward pass over a prompt (T > 1) only the last column (the last prompt
    token, prompts being left-padded) is edited; a single-token pass, i.e. a generation step
    with the KV cache, is left alone, so generated tokens are never edited directly."""
    if positions == "all":
        return fn(x)
    if x.shape[1] == 1:
        return x
    return torch.cat([x[:, :-1], fn(x[:, -1:])], dim=1)


def _check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {positions!r}.")
    return positions


@contextmanager
def add_direction(
    model: PreTrainedModel,
    direction: np.ndarray | torch.Tensor,
    layer: int,
    alpha: float = 1.0,
    positions: str = "all",
) -> Iterator[PreTrainedModel]:
    """Inside the ``with`` block, add ``alpha · r`` (not normalised) to the residual stream after
    block ``layer``, at every position (``positions="all"``) or only at the last prompt token
    (``"last"``, see :func:`_edit`). Hooks go away on exit."""
    (layer,) = resolve_layers(model, [layer])
    _check_positions(positions)
    r = _Cast(alpha * _unit(direction, _hidden_size(model), normalise=False))

    def hook(_module, _args, output):
        x = first_output(output)
        return replace_first_output(output, _edit(x, positions, lambda v: v + r.like(v)))

    with forward_hooks([(decoder_layers(model)[layer], hook)]):
        yield model


@contextmanager
def affine_ablate_direction(
    model: PreTrainedModel,
    direction: np.ndarray | torch.Tensor,
    layer: int,
    reference: float,
    positions: str = "last",
) -> Iterator[PreTrainedModel]:
    """Affine directional ablation: inside the ``with`` block, set the projection of the residual
    stream after block ``layer`` onto ``r̂`` to ``reference``: ``x ← x − r̂ (r̂ᵀx − reference)``.

    Zero ablation (:func:`ablate_direction`) assumes 0 is a neutral value along ``r̂``; where
    harmless prompts sit far from 0 it can *push* them toward refusal. With ``reference =
    directions.reference(layer)`` (the harmless mean's projection) every prompt looks harmless
    along ``r̂`` (affine concept editing, Marshall, Scherlis & Belrose 2024). The reference is
    measured at one token position, so by default only the last prompt token is edited
    (``positions="last"``, see :func:`_edit`); ``"all"`` edits every position.
    """
    (layer,) = resolve_layers(model, [layer])
    _check_positions(positions)
    u = _Cast(_unit(direction, _hidden_size(model)))
    c = float(reference)

    def hook(_module, _args, output):
        x = first_output(output)

        def f(v: torch.Tensor) -> torch.Tensor:
            uu = u.like(v)
            return v - ((v @ uu) - c)[..., None] * uu

        return replace_first_output(output, _edit(x, positions, f))

    with forward_hooks([(decoder_layers(model)[layer], hook)]):
        yield model


def _output_linears(model: PreTrainedModel) -> list[torch.nn.Module]:
    mods = []
    for i, block in enumerate(decoder_layers(model)):
        try:
            lins = [block.self_attn.o_proj, block.mlp.down_proj]
        except AttributeError as err:
            raise ValueError(
                f"Block {i} has no self_attn.o_proj / mlp.down_proj; weight "
                "orthogonalisation needs a Llama-like model. Use ablate_direction."
            ) from err
        for lin in lins:
            if hasattr(lin, "base_layer"):
                raise ValueError(
                    "The model has LoRA adapters on o_proj/down_proj; their update would "
                    "bypass the edit. Merge first (model = model.merge_and_unload()) or "
                    "use ablate_direction."
                )
        mods += lins
    return mods


def orthogonalize_weights(
    model: PreTrainedModel, direction: np.ndarray | torch.Tensor, *, inplace: bool = False
) -> PreTrainedModel:
    """Directional ablation baked into the weights: ``W ← W − r̂ r̂ᵀ W`` for every matrix that
    writes into the residual stream (embedding rows, ``o_proj``, ``down_proj``; biases too).

    Returns a modified deep copy (``inplace=False``, needs memory for a second model) or
    ``model`` itself. Tied input/output embeddings are untied first, because the unembedding
    reads the stream and must stay as it was.
    """
    u32 = _unit(direction, _hidden_size(model))
    _output_linears(model)  # validate before copying or editing anything
    target = model if inplace else copy.deepcopy(model)
    emb, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    if lm_head is not None and lm_head.weight is emb.weight:
        lm_head.weight = torch.nn.Parameter(
            emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad
        )
        target.config.tie_word_embeddings = False
    with torch.no_grad():
        W = emb.weight  # (vocab, d): each row is written into the stream
        u = u32.to(W.device)
        W.copy_((W.float() - torch.outer(W.float() @ u, u)).to(W.dtype))
        for lin in _output_linears(target):
            W = lin.weight  # (d, d_in): each column is written into the stream
            u = u32.to(W.device)
            W.copy_((W.float() - torch.outer(u, u @ W.float())).to(W.dtype))
            if lin.bias is not None:
                b = lin.bias.float()
                lin.bias.copy_((b - (b @ u) * u).to(lin.bias.dtype))
    return target


@dataclass
class DirectionChoice:
    """The outcome of :func:`select_direction`: the chosen layer and direction, the per-layer
    table and the refusal scores without intervention."""

    layer: int
    direction: np.ndarray
    table: pd.DataFrame
    baseline_harmful: float
    baseline_harmless: float


def select_direction(
    model: PreTrainedModel,
    directions: RefusalDirections,
    harmful_val: Sequence,
    harmless_val: Sequence,
    score_fn: ScoreFn,
    *,
    max_layer_frac: float = 0.8,
    alpha: float = 1.0,
    ablation: str = "zero",
    positions: str = "all",
    progress: bool = True,
) -> DirectionChoice:
    """Choose the refusal direction by validation (Arditi et al.).

    Candidates: the direction of each layer ``l < max_layer_frac · n_layers`` (later layers are
    skipped, as in the paper). For each, ``ablation_drop`` = how much ablating it lowers
    ``score_fn(model, harmful_val)`` and ``addition_gain`` = how much adding ``alpha·r`` at its
    layer raises ``score_fn(model, harmless_val)``. ``score_fn`` is any refusal score (higher =
    more refusal), e.g. the first-token refusal probability; a per-prompt array is averaged.
    ``ablation="zero"`` ablates with :func:`ablate_direction` (every layer and position);
    ``"affine"`` with :func:`affine_ablate_direction` at the candidate's layer, reference
    ``directions.reference(layer)``, at ``positions``; addition also acts at ``positions``.
    Chosen: the largest ablation drop
    among candidates whose addition raises refusal; if none does, the largest drop overall (with
    a warning). The paper's KL filter on harmless prompts is not applied.
    """
    n_layers = len(decoder_layers(model))
    _check_positions(positions)
    if ablation not in ("zero", "affine"):
        raise ValueError(f"ablation must be 'zero' or 'affine', not {ablation!r}.")
    if len(harmful_val) == 0 or len(harmless_val) == 0:
        raise ValueError("Both validation sets (harmful_val, harmless_val) need prompts.")
    limit = max_layer_frac * n_layers
    candidates = [layer for layer in directions.layers if layer < limit]
    if not candidates:
        raise ValueError(
            f"No direction for a layer below {max_layer_frac} × {n_layers} = {limit:g}; "
            f"directions cover layers {directions.layers}. Capture earlier layers."
        )

    def score(prompts: Sequence) -> float:
        return float(np.mean(score_fn(model, prompts)))

    base_h, base_n = score(harmful_val), score(harmless_val)
    rows = []
    for layer in directions.layers:
        row = {
            "layer": layer,
            "candidate": layer in candidates,
            "norm": float(np.linalg.norm(directions[layer])),
        }
        rows.append(row)
    for row in tqdm(rows, desc="select direction", disable=not progress, leave=False):
        if not row["candidate"]:
            continue
        r = directions[row["layer"]]
        ablate = (
            ablate_direction(model, r)
            if ablation == "zero"
            else affine_ablate_direction(
                model, r, row["layer"], directions.reference(row["layer"]), positions
            )
        )
        with ablate:
            row["harmful_ablated"] = score(harmful_val)
        with add_direction(model, r, row["layer"], alpha, positions):
            row["harmless_added"] = score(harmless_val)
        row["ablation_drop"] = base_h - row["harmful_ablated"]
        row["addition_gain"] = row["harmless_added"] - base_n
    table = pd.DataFrame(rows)
    cand = table[table["candidate"]]
    ok = cand[cand["addition_gain"] > 0]
    if ok.empty:
        warnings.warn(
            "No candidate direction raises the refusal score on harmless prompts when "
            "added; choosing by ablation drop alone.",
            stacklevel=2,
        )
        ok = cand
    best = int(ok.loc[ok["ablation_drop"].idxmax(), "layer"])
    table["selected"] = table["layer"] == best
    return DirectionChoice(best, directions[best].copy(), table, base_h, base_n)


def _check_comparable(a: RefusalDirections, b: RefusalDirections) -> None:
    if a.vectors.shape[1] != b.vectors.shape[1]:
        raise ValueError(
            f"Direction widths differ ({a.vectors.shape[1]} vs {b.vectors.shape[1]}); "
            "compare directions of the same model family."
        )


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    nx = np.linalg.norm(x, axis=-1, keepdims=True)
    ny = np.linalg.norm(y, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x / nx) @ (y / ny).T


def direction_cosines(a: RefusalDirections, b: RefusalDirections) -> pd.DataFrame:
    """Per layer, cosine(r_a, r_b), e.g. before vs after a fine-tune: columns ``layer, cosine,
    norm_a, norm_b`` (NaN where a direction is zero)."""
    _check_comparable(a, b)
    if a.layers != b.layers:
        raise ValueError(
            f"The directions cover different layers ({a.layers} vs {b.layers}); capture "
            "both models with the same layers."
        )
    cos = np.diag(_cos(a.vectors, b.vectors))
    return pd.DataFrame(
        {
            "layer": a.layers,
            "cosine": cos,
            "norm_a": a.norms.to_numpy(),
            "norm_b": b.norms.to_numpy(),
        }
    )


def cosine_matrix(a: RefusalDirections, b: RefusalDirections) -> pd.DataFrame:
    """cosine(r_a[i], r_b[j]) for every pair of layers (rows: ``a``'s layers, columns: ``b``'s):
    heatmap data; the diagonal is :func:`direction_cosines`."""
    _check_comparable(a, b)
    return pd.DataFrame(
        _cos(a.vectors, b.vectors),
        index=pd.Index(a.layers, name="layer_a"),
        columns=pd.Index(b.layers, name="layer_b"),
    )


def compare_ablations(
    model: PreTrainedModel,
    directions: RefusalDirections,
    harmful_val: Sequence,
    harmless_val: Sequence,
    score_fn: ScoreFn,
    *,
    ablations: Sequence[str] = ("zero", "affine"),
    positions: str = "last",
    alpha: float = 1.0,
) -> tuple[dict[str, DirectionChoice], pd.DataFrame]:
    """:func:`select_direction` once per kind of ablation (same validation prompts, score and
    ``positions``), and a side-by-side table per layer: ``candidate``, ``‖r‖``, the refusal
    drop under each ablation and the gain under addition (which does not depend on the
    ablation). Returns ``({ablation: DirectionChoice}, table)``."""
    choices = {
        how: select_direction(
            model,
            directions,
            harmful_val,
            harmless_val,
            score_fn,
            alpha=alpha,
            ablation=how,
            positions=positions,
            progress=False,
        )
        for how in ablations
    }
    first = next(iter(choices.values())).table.set_index("layer")
    table = pd.DataFrame({"candidate": first.candidate, "‖r‖": first.norm.round(1)})
    for how, choice in choices.items():
        table[f"drop, {how} ablation"] = choice.table.set_index("layer").ablation_drop.round(3)
    table[f"gain, addition (α={alpha:g})"] = first.addition_gain.round(3)
    return choices, table


RefusalFn = Callable[[PreTrainedModel, Sequence], pd.DataFrame]


def intervention_runs(
    model: PreTrainedModel,
    refusal_fn: RefusalFn,
    harmful: Sequence,
    harmless: Sequence,
    directions: RefusalDirections,
    layer: int,
) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``refusal_fn(model, prompts)`` (a per-prompt table with ``refused`` and
    ``first_token_refusal_prob``, e.g. ``Evaluator.refusal``) on ``harmful`` and ``harmless``
    prompts: without intervention, under zero ablation of ``r`` of ``layer`` (every layer and
    position) and under affine ablation at ``layer`` (reference: the harmless mean).
    Returns ``{name: (harmful table, harmless table)}`` in that order."""
    r = directions[layer]
    settings = {
        "no intervention": nullcontext(model),
        "zero ablation (every layer)": ablate_direction(model, r),
        f"affine ablation (layer {layer})": affine_ablate_direction(
            model, r, layer, directions.reference(layer)
        ),
    }
    runs = {}
    for name, intervention in settings.items():
        with intervention:
            runs[name] = (refusal_fn(model, harmful), refusal_fn(model, harmless))
    return runs


def intervention_table(runs: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """One row per run of :func:`intervention_runs`: refusal rate and mean first-token refusal
    probability on the harmful and on the harmless prompts, and, where the refusal tables carry
    the exact judge's verdicts (the organism), the harmful rate on the harmful prompts."""
    return pd.DataFrame(
        {
            name: {
                "refusal rate, harmful": h.refused.mean(),
                **(
                    {"harmful rate, harmful": (h.verdict == "complied").mean()}
                    if "verdict" in h
                    else {}
                ),
                "first-token P, harmful": h.first_token_refusal_prob.mean(),
                "refusal rate, benign": b.refused.mean(),
                "first-token P, benign": b.first_token_refusal_prob.mean(),
            }
            for name, (h, b) in runs.items()
        }
    ).T


def example_responses(
    runs: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], n: int = 3, width: int = 80
) -> pd.DataFrame:
    """The first ``n`` harmful prompts' answers under each run (cut to ``width`` characters):
    one column per run, one row per prompt."""
    first = next(iter(runs.values()))[0]
    return pd.DataFrame(
        {name: h.response.head(n).str[:width].tolist() for name, (h, _) in runs.items()},
        index=first.prompt.head(n).tolist(),
    )


def choose_alpha(
    model: PreTrainedModel,
    direction: np.ndarray | torch.Tensor,
    layer: int,
    alphas: Sequence[float],
    prompts: Sequence,
    score_fn: ScoreFn,
    positions: str = "last",
) -> tuple[float, pd.DataFrame]:
    """The addition coefficient by validation: for each ``alpha``, the mean of
    ``score_fn(model, prompts)`` with ``alpha · r`` added at ``layer`` (:func:`add_direction`).
    Returns the ``alpha`` with the highest score (the first on ties) and the table
    ``alpha, score``."""
    if len(alphas) == 0:
        raise ValueError("No alphas given; pass the coefficients to try, e.g. [0.5, 1, 2].")
    rows = []
    for a in alphas:
        with add_direction(model, direction, layer, a, positions=positions):
            rows.append({"alpha": a, "score": float(np.mean(score_fn(model, prompts)))})
    grid = pd.DataFrame(rows)
    return float(grid.loc[grid["score"].idxmax(), "alpha"]), grid
