"""tinker-cookbook's path for the evaluator interfaces (`tinker_cookbook.eval.evaluators`):
the same names as `bios_callbacks.evaluators`, so ported imports work unchanged.

Example:
    >>> from bios_callbacks.eval.evaluators import SamplingClientEvaluator, EvaluatorBuilder
"""

from bios_callbacks.evaluators import (
    Evaluator,
    EvaluatorBuilder,
    SamplingClientEvaluator,
    SamplingClientEvaluatorBuilder,
    TrainingClientEvaluator,
    TrainingClientEvaluatorBuilder,
)

__all__ = [
    "Evaluator",
    "EvaluatorBuilder",
    "SamplingClientEvaluator",
    "SamplingClientEvaluatorBuilder",
    "TrainingClientEvaluator",
    "TrainingClientEvaluatorBuilder",
]
