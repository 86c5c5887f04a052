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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safealign_lib.evaluation.judges import ExactJudge, Judge, Verdict
from safealign_lib.evaluation.metrics import (
    first_token_refusal_prob,
    refusal_eval,
    safety_report,
    utility_eval,
)
from safealign_lib.evaluation.reliability import auarc
from safealign_lib.models.chat import ChatExample


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
        return table

    @staticmethod
    def rates(refusal: pd.DataFrame) -> dict[str, float]:
        """``empty_rate`` of a refusal table (with its ``empty_answer`` column), and
        ``harmful_rate`` when it has the exact judge's verdicts."""
        out = {}
        if "empty_answer" in refusal:
            out["empty_rate"] = float(refusal["empty_answer"].mean())
        if "verdict" in refusal:
            out["harmful_rate"] = float((refusal.verdict == Verdict.COMPLIED.value).mean())
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
