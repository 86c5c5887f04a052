"""From the aligned model to its fine-tunes: do its probes and its refusal direction still hold?

- :class:`ProbePrompts`: the labelled prompts every model is read on. Probes and directions are
  *fitted* on the ``*_val`` splits and *scored* on the test splits (no prompt in common), four
  kinds each (:data:`KINDS`: harmful and benign requests, on tasks seen in alignment with
  held-out phrasings and on unseen tasks).
- :func:`study_fine_tunes`: for each fine-tune and seed, on the same prompts: the aligned
  model's probes applied unchanged (SaLoRA §3.2), probes refitted, the fine-tune's own
  direction and its cosine with the aligned one, the projections onto the aligned direction,
  and the first-token refusal probability as is, with the aligned direction added and with it
  affinely ablated. :meth:`FineTuneStudy.per_seed` and :func:`summary_table` summarise it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib.data import load_split
from safealign_lib.evaluation import Evaluator, seed_table
from safealign_lib.interp.activations import Activations, Position, capture_activations
from safealign_lib.interp.probes import ProbeSet, probe_accuracy
from safealign_lib.interp.refusal_direction import (
    RefusalDirections,
    add_direction,
    affine_ablate_direction,
    direction_cosines,
    refusal_directions,
)
from safealign_lib.models.chat import ChatExample

KINDS = ("harmful_heldout", "harmful_unseen", "benign_heldout", "benign_unseen")


@dataclass
class ProbePrompts:
    """Fitting (``val``) and scoring (``test``) prompts per kind. :attr:`examples` lists all
    fitting prompts, then all scoring prompts (kinds in order), so :attr:`train_idx` and
    :attr:`test_idx` index any capture of :attr:`examples`."""

    val: dict[str, list[ChatExample]]
    test: dict[str, list[ChatExample]]

    @classmethod
    def load(cls, n: int, kinds: Sequence[str] = KINDS) -> ProbePrompts:
        """The first ``n`` prompts of each kind's ``<kind>_val`` and ``<kind>`` split."""
        return cls(
            {k: load_split(k + "_val")[:n] for k in kinds}, {k: load_split(k)[:n] for k in kinds}
        )

    @property
    def examples(self) -> list[ChatExample]:
        return [ex for part in (self.val, self.test) for exs in part.values() for ex in exs]

    @property
    def train_idx(self) -> np.ndarray:
        """Positions of the fitting prompts in :attr:`examples`."""
        return np.arange(sum(len(v) for v in self.val.values()))

    @property
    def test_idx(self) -> np.ndarray:
        """Positions of the scoring prompts in :attr:`examples`."""
        n_val = len(self.train_idx)
        return np.arange(n_val, n_val + sum(len(v) for v in self.test.values()))

    @property
    def test_kind(self) -> np.ndarray:
        """The kind of each scoring prompt, aligned with :attr:`test_idx`."""
        return np.array([k for k, exs in self.test.items() for _ in exs])

    def capture(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 16,
        position: Position = "last",
    ) -> Activations:
        """Every site and layer of ``model`` on :attr:`examples`, at ``position`` (default: the
        last prompt token; see :mod:`safealign_lib.interp.activations`)."""
        return capture_activations(
            model,
            tokenizer,
            self.examples,
            position=position,
            batch_size=batch_size,
            progress=False,
        )


@dataclass
class FineTuneStudy:
    """The tables of :func:`study_fine_tunes`, each with ``condition`` and ``seed`` columns.

    ``runs``: first-token refusal probability on the harmful prompts (as is, ``… chat direction
    added``, ``… affinely ablated``) and the mean projection of harmful and benign test prompts
    onto the aligned direction. ``transfer``: the aligned probes' accuracy (``ProbeSet.score``).
    ``refit``: :func:`~safealign_lib.interp.probes.probe_accuracy` of new probes. ``cosines``:
    :func:`~safealign_lib.interp.refusal_direction.direction_cosines` (aligned vs fine-tuned).
    ``projections``: per condition, one array of test-prompt projections per seed.
    """

    runs: pd.DataFrame
    transfer: pd.DataFrame
    refit: pd.DataFrame
    cosines: pd.DataFrame
    projections: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def per_seed(self, best: tuple[str, int], layer: int) -> pd.DataFrame:
        """One row per (condition, seed): ``runs`` plus the aligned model's ``best`` (site,
        layer) probe applied unchanged, the best refitted probe, and the cosine at ``layer``."""
        keys = ["condition", "seed"]
        at_best = (self.transfer.site == best[0]) & (self.transfer.layer == best[1])
        out = self.runs.set_index(keys)
        out["transferred probe acc"] = self.transfer[at_best].set_index(keys).accuracy
        out["refit probe acc (best)"] = self.refit.groupby(keys).acc_heldout.max()
        at_layer = self.cosines[self.cosines.layer == layer]
        out[f"cos(r_chat, r_ft), layer {layer}"] = at_layer.set_index(keys).cosine
        return out


def study_fine_tunes(
    load_model: Callable[[str, int], PreTrainedModel],
    conditions: Sequence[str],
    seeds: Sequence[int],
    prompts: ProbePrompts,
    ev: Evaluator,
    probes: ProbeSet,
    directions: RefusalDirections,
    layer: int,
    alpha: float,
    harmful: Sequence[ChatExample],
) -> FineTuneStudy:
    """Read each fine-tune (``load_model(condition, seed)``, one model in memory at a time)
    with the aligned model's ``probes`` (fitted on ``prompts.train_idx``) and ``directions``,
    features taken at the directions' position: see :class:`FineTuneStudy`. ``layer`` and
    ``alpha`` are where and how much of the aligned direction is added back (and where it is
    affinely ablated); ``harmful`` are the prompts the first-token refusal probability is
    measured on (batches and tokenizer from ``ev``)."""
    train, test = prompts.train_idx, prompts.test_idx
    r, ref = directions[layer], directions.reference(layer)

    def measure(model: PreTrainedModel) -> tuple[dict[str, pd.DataFrame], np.ndarray, dict]:
        acts = prompts.capture(model, ev.tokenizer, ev.batch_size, directions.position)
        tables = {
            "transfer": probes.score(acts, test),
            "refit": probe_accuracy(acts, split=(train, test), cv=0),
            "cosines": direction_cosines(directions, refusal_directions(acts.subset(train))),
        }
        p, y = directions.project(acts, layer, test), acts.labels[test]
        with add_direction(model, r, layer, alpha, positions="last"):
            p_add = ev.first_token(model, harmful).mean()
        with affine_ablate_direction(model, r, layer, ref):
            p_abl = ev.first_token(model, harmful).mean()
        row = {
            "first-token P": ev.first_token(model, harmful).mean(),
            "… chat direction added": p_add,
            "… affinely ablated": p_abl,
            "projection, harmful": p[y == 1].mean(),
            "projection, benign": p[y == 0].mean(),
        }
        return tables, p, row

    rows, projections = [], {}
    tables: dict[str, list[pd.DataFrame]] = {"transfer": [], "refit": [], "cosines": []}
    for cond in conditions:
        for s in seeds:
            parts, p, row = measure(load_model(cond, s))  # one fine-tune in memory at a time
            for name, frame in parts.items():
                tables[name].append(frame.assign(condition=cond, seed=s))
            projections.setdefault(cond, []).append(p)
            rows.append({"condition": cond, "seed": s, **row})
    return FineTuneStudy(
        pd.DataFrame(rows), **{k: pd.concat(v) for k, v in tables.items()}, projections=projections
    )


def chat_summary(
    interventions: pd.DataFrame,
    projection: np.ndarray,
    labels: np.ndarray,
    probe_table: pd.DataFrame,
    best: tuple[str, int],
    layer: int,
) -> dict[str, float]:
    """The aligned model's row of :func:`summary_table`, in the columns of
    :meth:`FineTuneStudy.per_seed`: ``interventions`` is
    :func:`~safealign_lib.interp.refusal_direction.intervention_table` (rows: no intervention,
    zero ablation, affine ablation), ``projection`` its test prompts' projections with their
    ``labels``, ``probe_table`` its :func:`~safealign_lib.interp.probes.probe_accuracy`."""
    at_best = probe_table[(probe_table.site == best[0]) & (probe_table.layer == best[1])]
    return {
        "first-token P": interventions.iloc[0]["first-token P, harmful"],
        "… chat direction added": np.nan,  # not measured on the aligned model
        "… affinely ablated": interventions.iloc[2]["first-token P, harmful"],
        "projection, harmful": projection[labels == 1].mean(),
        "projection, benign": projection[labels == 0].mean(),
        "transferred probe acc": float(at_best.acc_heldout.iloc[0]),
        "refit probe acc (best)": probe_table.acc_heldout.max(),
        f"cos(r_chat, r_ft), layer {layer}": 1.0,
    }


def summary_table(per_seed: pd.DataFrame, chat: Mapping[str, float]) -> pd.DataFrame:
    """Mean ± sd over seeds per condition (:func:`~safealign_lib.evaluation.seed_table`), with
    the aligned model's values (:func:`chat_summary`) as the row ``chat (before)``, conditions
    as columns; "–" where the aligned model has no value."""
    table = seed_table(
        per_seed.reset_index(),
        "condition",
        list(per_seed.columns),
        reference={"chat (before)": chat},
    )
    return table.replace("nan", "–").T
