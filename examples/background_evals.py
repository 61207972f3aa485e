"""Evaluations that do not block training: background rounds, then the checkpoint watcher.

Fine-tunes the embedded SmolLM2-135M-Instruct on the `make demo` capitals task. The infrequent
evaluator (strict-format QA accuracy, which samples) runs in the background on a copy of each
round's weights while training goes on (the trainers' `async_infrequent=True`, passed to
`EvalCallback`), and is logged at its own step. After training, the checkpoint watcher
evaluates every saved checkpoint with an Inspect task and logs it at the checkpoint's step
under `<run>/watch/`; during a real run you would start it in another terminal instead:

    python -m examples.background_evals [steps=8 save_every=4 infrequent_eval_every=3 ...]
    python -m bios_callbacks.eval.watch run=bios://<run> tasks=examples.demo:capitals_task \\
        max_tokens=24 until_step=8          # while the run trains
    tensorboard --logdir runs/<run>         # training, background and watcher curves together
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from examples.demo import capitals_data, format_eval
from trainers.cli import run_cli
from trainers.config import SFTConfig

WATCHED_TASK = "examples.demo:capitals_task"


def settings() -> dict[str, Any]:
    """The capitals data, a short run with two checkpoints, the test loss every 4 steps and
    QA accuracy every 3 steps in the background."""
    return capitals_data() | {
        "steps": 8,
        "save_every": 4,
        "eval_every": 4,
        "infrequent_evaluator_builders": [format_eval],
        "infrequent_eval_every": 3,
        "async_infrequent": True,
    }


def train(cfg: SFTConfig, callbacks: Sequence[Any] = ()) -> None:
    """The SFT trainer (its infrequent rounds in the background as `async_infrequent` says),
    then one pass of the watcher over the run's checkpoints."""
    from bios_callbacks.eval.watch import WatchArgs, watch
    from trainers import sft

    result = sft.train(cfg, callbacks=callbacks)

    print(f"\nthe watcher on {result.log_dir} (from another terminal during a real run):")
    watch(WatchArgs(run=str(result.log_dir), tasks=[WATCHED_TASK], max_tokens=24, once=True))


def main(argv: list[str]) -> int:
    return run_cli(SFTConfig, train, argv, doc=__doc__, defaults=settings())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
