"""`EvalCallback` and its parts, one concept a module:

    eval_callback.py   the Lightning hooks: when rounds run, state in checkpoints
    schedule.py        each evaluator list and its pure `due(step, previous)` rule
    round.py           one round: build evaluators, run them concurrently, collect results
    live_clients.py    sampling and training clients over the live module
    background.py      infrequent rounds on a weight snapshot in a worker thread (async_infrequent)
    snapshot.py        the one reusable copy of the weights those rounds evaluate
    publish.py         loggers, callback_metrics, transcripts, failure warnings
    transcripts/       transcripts in each logger's form (TensorBoard, W&B, MLflow, CSV)
    results.py         RoundRecord and eval_results.jsonl
    console.py         what a round prints
    held_out.py        the held-out guard
    run_sync.py, lightning_private.py   async from Lightning's hooks; Lightning's private bits

Example:
    >>> from bios_callbacks.callback import EvalCallback  # doctest: +SKIP
"""

from bios_callbacks.callback.eval_callback import CHECKPOINT_KEY, EvalCallback

__all__ = ["CHECKPOINT_KEY", "EvalCallback"]
