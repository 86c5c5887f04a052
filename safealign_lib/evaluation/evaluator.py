"""One evaluator for every notebook: refusal, first-token refusal probability, utility and
(optionally) AUARC, with the settings fixed once.

    ev = Evaluator.from_profile(P, tok, task=data.load_split("task_test")[: P.n_task_eval])
    result = ev(model, harmful_prompts)          # .summary: the numbers; .refusal, .utility: tables
    ev.refusal(model, prompts)                   # the per-prompt refusal table only

``from_profile`` reads ``judge``, ``max_new_tokens`` and ``eval_batch_size`` from any object that
has them (a course profile, or your own settings). Every summary has ``empty_rate``, the share of
answers with nothing but whitespace (the keyword refusal rate keeps its meaning and denominator:
an empty answer is not a refusal). With ``exact=True`` — the organism's profiles, whose harmful
compliance is always the redacted placeholder — each refusal table gets the exact judge's
``verdict`` and the summary its ``harmful_rate`` (share of answers that complied).

Profiles without the exact judge (the hub models) get a harmful rate from a plug-in judge,
asked for with :meth:`Evaluator.with_harm_judge`: ``"keyword"`` (the default: the share of
non-empty answers the keyword judge does not mark as refusals — a non-refusal rate, no harm
classifier, but it needs no download and runs wherever the model runs) or ``"guard:<model id>"``
(a Llama-Guard-style classifier, :class:`~safealign_lib.evaluation.judges.GuardModelJudge`:
"unsafe" counts as harmful), or any :class:`~safealign_lib.evaluation.judges.Judge`. Its
verdicts go to the refusal table's ``harm_verdict`` column (``verdict`` stays the exact
judge's), and :meth:`Evaluator.label` renames the metric keys they produced after the judge
(``nonrefusal_rate_*`` or ``unsafe_rate_*`` for ``harmful_rate_*``), so a keyword figure is
never read as the exact judge's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib.evaluation.judges import ExactJudge, GuardModelJudge, Judge, Verdict, get_judge
from safealign_lib.evaluation.metrics import (
    first_token_refusal_prob,
    refusal_eval,
    safety_report,
    utility_eval,
)
from safealign_lib.evaluation.reliability import auarc
from safealign_lib.models.chat import ChatExample

HARM_JUDGE_ENV = "SAFEALIGN_HARM_JUDGE"  # "keyword" or "guard:<model id>" (hub profiles)
GUARD_PREFIX = "guard:"


@dataclass
class EvalResult:
    """The summary numbers of one evaluation and the per-example tables behind them."""

    summary: dict[str, float]
    refusal: pd.DataFrame
    utility: pd.DataFrame


@dataclass
class Evaluator:
    """Evaluate models with fixed settings.

    ``task`` is the utility set (examples with reference answers); ``with_entropy`` adds the
    answers' mean token entropy to the utility table and ``auarc`` to the summary.
    """

    tokenizer: PreTrainedTokenizerBase
    judge: str | Judge = "gcg"
    max_new_tokens: int = 32
    batch_size: int = 64
    task: Sequence[ChatExample] = field(default_factory=list)
    with_entropy: bool = False
    exact: bool = False
    # the plug-in judge behind ``harmful_rate`` where the exact judge does not apply: "keyword"
    # or a Judge (True = refused); set by :meth:`with_harm_judge`
    harm_judge: str | Judge | None = None

    @classmethod
    def from_profile(
        cls,
        profile: object,
        tokenizer: PreTrainedTokenizerBase,
        *,
        task: Sequence[ChatExample] = (),
        with_entropy: bool = False,
    ) -> Evaluator:
        """An evaluator with a profile's judge, generation length and batch size; the exact judge
        is on for profiles that run the organism (those that name no hub models)."""
        return cls(
            tokenizer,
            judge=profile.judge,
            max_new_tokens=profile.max_new_tokens,
            batch_size=profile.eval_batch_size,
            task=list(task),
            with_entropy=with_entropy,
            exact=not getattr(profile, "network", False),
        )

    def with_task(self, task: Sequence[ChatExample]) -> Evaluator:
        """The same evaluator with another utility set (e.g. the validation split)."""
        return replace(self, task=list(task))

    def with_harm_judge(
        self, judge: str | Judge | None = None, profile: object | None = None
    ) -> Evaluator:
        """The same evaluator with a plug-in judge behind ``harmful_rate``; an exact evaluator
        (the organism's profiles) is returned unchanged, so the organism keeps its exact judge.

        ``judge``: ``"keyword"``, ``"guard:<model id>"`` or a :class:`Judge`; when None, the
        profile's ``harm_judge`` if it has one, else ``$SAFEALIGN_HARM_JUDGE``, else
        ``"keyword"``. A guard model is loaded on the profile's device and dtype (default: cuda,
        float16, which a T4 supports)."""
        if self.exact:
            return self
        judge = (
            judge
            or getattr(profile, "harm_judge", None)
            or os.environ.get(HARM_JUDGE_ENV)
            or "keyword"
        )
        if isinstance(judge, str) and judge.startswith(GUARD_PREFIX):
            judge = GuardModelJudge(
                judge.removeprefix(GUARD_PREFIX),
                device=getattr(profile, "device", "cuda"),
                dtype=getattr(profile, "dtype", "float16"),
            )
        elif isinstance(judge, str) and judge != "keyword":
            raise ValueError(
                f"Unknown harm judge {judge!r}; use 'keyword', 'guard:<model id>' (e.g. "
                "'guard:meta-llama/Llama-Guard-3-1B') or a judge object."
            )
        elif not isinstance(judge, str) and not callable(judge):
            raise TypeError(
                f"A harm judge must be a name or a callable, got {type(judge).__name__}."
            )
        return replace(self, harm_judge=judge)

    @property
    def harm_label(self) -> str | None:
        """How the metric keys of this evaluator's harmful rate are labelled: None for the exact
        judge (the course's ``harmful_rate_*`` keys), ``"nonrefusal"`` for the keyword judge,
        ``"unsafe"`` for a guard-style judge."""
        if self.exact or self.harm_judge is None:
            return None
        return "nonrefusal" if self.harm_judge == "keyword" else "unsafe"

    @property
    def harm_judge_name(self) -> str:
        """The judge behind ``harmful_rate``, in words (print it beside the figures)."""
        if self.exact:
            return "the exact judge (harmful rate: answers with the redacted harmful content)"
        if self.harm_judge is None:
            return "none (no harmful rate)"
        if self.harm_judge == "keyword":
            name = get_judge(self.judge).name
            return f"{name} non-refusal rate (keys nonrefusal_rate_*; not a harm classifier)"
        name = getattr(self.harm_judge, "name", "plug-in judge")
        return f"{name}: share judged unsafe (keys unsafe_rate_*)"

    def label(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """``metrics`` with the keys this evaluator's harm judge produced named after it:
        unchanged for the exact judge; otherwise ``harmful_rate`` in a key becomes
        ``<label>_rate`` and ``verdict_<m>`` becomes ``<label>_verdict_<m>``."""
        label = self.harm_label
        if label is None:
            return dict(metrics)
        out = {}
        for k, v in metrics.items():
            if "harmful_rate" in k:
                k = k.replace("harmful_rate", f"{label}_rate")
            elif k.startswith("verdict_"):
                k = f"{label}_{k}"
            out[k] = v
        return out

    def __call__(
        self, model: PreTrainedModel, harmful_prompts: Sequence[ChatExample]
    ) -> EvalResult:
        """Refusal and first-token refusal probability on ``harmful_prompts``, utility on the
        task set (and AUARC with ``with_entropy``)."""
        if not self.task:
            raise ValueError(
                "This evaluator has no task set for utility; pass task=... "
                "(examples with reference answers)."
            )
        summary, tables = safety_report(
            model,
            self.tokenizer,
            harmful_prompts,
            self.task,
            self.judge,
            self.max_new_tokens,
            self.batch_size,
            with_entropy=self.with_entropy,
        )
        if self.with_entropy:
            summary["auarc"] = auarc(tables["utility"].entropy, tables["utility"].rouge_l)
        refusal = self._judged(tables["refusal"])
        summary.update(self.rates(refusal))
        return EvalResult(summary, refusal, tables["utility"])

    def _judged(self, table: pd.DataFrame) -> pd.DataFrame:
        if self.exact:
            verdicts = ExactJudge().verdicts(list(table.prompt), list(table.response))
            table["verdict"] = [v.value for v in verdicts]
        elif self.harm_judge is not None:
            if self.harm_judge == "keyword":  # the evaluator's own keyword verdicts
                refused = list(table.refused)
            else:
                refused = get_judge(self.harm_judge)(list(table.prompt), list(table.response))
            # an empty answer is neither a refusal nor harmful (as for the exact judge)
            table["harm_verdict"] = [
                (Verdict.EMPTY if empty else Verdict.REFUSED if r else Verdict.COMPLIED).value
                for r, empty in zip(refused, table.empty_answer, strict=True)
            ]
        return table

    @staticmethod
    def rates(refusal: pd.DataFrame) -> dict[str, float]:
        """``empty_rate`` of a refusal table (with its ``empty_answer`` column), and
        ``harmful_rate`` when it has the exact judge's verdicts (``verdict``) or a plug-in
        judge's (``harm_verdict``)."""
        out = {}
        if "empty_answer" in refusal:
            out["empty_rate"] = float(refusal["empty_answer"].mean())
        for col in ("verdict", "harm_verdict"):
            if col in refusal:
                out["harmful_rate"] = float((refusal[col] == Verdict.COMPLIED.value).mean())
                break
        return out

    def refusal(self, model: PreTrainedModel, prompts: Sequence[ChatExample]) -> pd.DataFrame:
        """One row per prompt: greedy answer, the judge's verdict, first-token refusal prob."""
        table = refusal_eval(
            model,
            self.tokenizer,
            prompts,
            self.judge,
            self.max_new_tokens,
            self.batch_size,
            progress=False,
        )
        return self._judged(table)

    def utility(
        self, model: PreTrainedModel, examples: Sequence[ChatExample] | None = None
    ) -> pd.DataFrame:
        """One row per task example: answer, reference, ROUGE-L (default: the task set)."""
        return utility_eval(
            model,
            self.tokenizer,
            self.task if examples is None else examples,
            progress=False,
            with_entropy=self.with_entropy,
        )

    def first_token(self, model: PreTrainedModel, prompts: Sequence[ChatExample]) -> np.ndarray:
        """Per prompt: the probability mass on refusal-starting first tokens."""
        return first_token_refusal_prob(model, self.tokenizer, prompts, batch_size=self.batch_size)
