"""Evaluations with Inspect AI: the `bios/` model API, inline evaluators and the offline CLI.

- `bios_callbacks.eval.inspect_utils.InspectAPIFromBiosSampling`: Inspect model API over a
  sampling client.
- `bios_callbacks.eval.inspect_evaluators.InspectEvaluatorBuilder`: Inspect tasks as an
  evaluator builder for `EvalCallback`.
- `python -m bios_callbacks.eval.run_inspect_evals`: Inspect tasks on a saved checkpoint.

Nothing heavy is imported here; import the submodule you need.
"""
