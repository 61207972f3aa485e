"""Evaluators: what `EvalCallback` runs, and the built-in ones.

Example:
    >>> from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
    >>> builders = [lambda: NLLEvaluator([[1, 2, 3]])]
"""

from bios_callbacks.evaluators.base import (
    Evaluator,
    EvaluatorBuilder,
    SamplingClientEvaluator,
    SamplingClientEvaluatorBuilder,
    TrainingClientEvaluator,
    TrainingClientEvaluatorBuilder,
    Transcript,
)
from bios_callbacks.evaluators.nll import NLLEvaluator
from bios_callbacks.evaluators.qa import QAEvaluator

__all__ = [
    "Evaluator",
    "EvaluatorBuilder",
    "NLLEvaluator",
    "QAEvaluator",
    "SamplingClientEvaluator",
    "SamplingClientEvaluatorBuilder",
    "TrainingClientEvaluator",
    "TrainingClientEvaluatorBuilder",
    "Transcript",
]
