"""Evaluations with Inspect AI: the `bios/` model API, inline evaluators and the offline CLI.

- `bios_callbacks.eval.inspect_utils.InspectAPIFromBiosSampling`: Inspect model API over a
  sampling client.
- `bios_callbacks.eval.inspect_evaluators.InspectEvaluatorBuilder`: Inspect tasks as an
  evaluator builder for `EvalCallback`.
- `python -m bios_callbacks.eval.run_inspect_evals`: Inspect tasks on a saved checkpoint.

The evaluator interfaces are importable from here too, as from `tinker_cookbook.eval`; nothing
heavy is imported here (no torch, no Inspect), so import the submodule you need for the rest.

Example:
    >>> from bios_callbacks.eval import SamplingClientEvaluator, EvaluatorBuilder
"""

from bios_callbacks.eval.evaluators import *  # noqa: F403 (the names listed in its __all__)
from bios_callbacks.eval.evaluators import __all__ as __all__
