"""Evaluation: judges (:mod:`.judges`), metrics (:mod:`.metrics`), reliability
(:mod:`.reliability`), the evaluator (:mod:`.evaluator`), seed tables (:mod:`.tables`),
interleaved latency timing (:mod:`.timing`) and per-position divergence over the first answer
tokens (:mod:`.divergence`).

The names of :mod:`.metrics`, the evaluator and the seed tables are re-exported here:
``from safealign_lib import evaluation; evaluation.Evaluator``.
"""

from safealign_lib.evaluation.divergence import answer_position_divergence
from safealign_lib.evaluation.evaluator import EvalResult, Evaluator
from safealign_lib.evaluation.metrics import (
    first_token_refusal_prob,
    refusal_eval,
    refusal_token_ids,
    rouge_l,
    safety_report,
    utility_eval,
)
from safealign_lib.evaluation.tables import fmt_mean_sd, paired_differences, seed_stats, seed_table

__all__ = [
    "answer_position_divergence",
    "EvalResult",
    "Evaluator",
    "fmt_mean_sd",
    "paired_differences",
    "seed_stats",
    "seed_table",
    "refusal_token_ids",
    "first_token_refusal_prob",
    "rouge_l",
    "refusal_eval",
    "utility_eval",
    "safety_report",
]
