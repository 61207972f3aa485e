"""The former path of `bios_callbacks.eval.inspect_evaluators` (tinker-cookbook's name), kept so
existing imports work.

Example:
    >>> from bios_callbacks.eval.inspect_evaluator import InspectEvaluatorBuilder
    >>> from bios_callbacks.eval import inspect_evaluators
    >>> InspectEvaluatorBuilder is inspect_evaluators.InspectEvaluatorBuilder
    True
"""

from bios_callbacks.eval.inspect_evaluators import (
    InspectEvaluator,
    InspectEvaluatorBuilder,
    with_stderr_names,
)

__all__ = ["InspectEvaluator", "InspectEvaluatorBuilder", "with_stderr_names"]
