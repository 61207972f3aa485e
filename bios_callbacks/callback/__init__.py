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

Names resolve lazily: `bios_callbacks.callback.results` (what `compare` reads) imports no
torch or Lightning.

Example:
    >>> from bios_callbacks.callback import EvalCallback  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["CHECKPOINT_KEY", "EvalCallback"]

if TYPE_CHECKING:
    from bios_callbacks.callback.eval_callback import CHECKPOINT_KEY, EvalCallback


def __getattr__(name: str) -> Any:
    # Lazy, so the torch-free parts (results.py, schedule.py) import without Lightning.
    if name in __all__:
        return getattr(importlib.import_module("bios_callbacks.callback.eval_callback"), name)
    raise AttributeError(f"module 'bios_callbacks.callback' has no attribute {name!r}")
