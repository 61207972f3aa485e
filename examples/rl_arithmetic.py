"""RL on a verifiable task: small additions, reward 1 when the reply's final number is the sum.

Each iteration samples `group_size` replies per question from the current weights, rewards the
correct ones, and pushes the policy toward replies that beat their group's average. Two QA
evaluators on held-out questions run every `eval_every` iterations: accuracy of replies
sampled at temperature 1 (what the rollouts see) and of greedy replies.

    python -m examples.rl_arithmetic [steps=20 batch_size=4 group_size=8 learning_rate=2e-5 ...]
"""

from __future__ import annotations

import random
import re
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from bios_callbacks.models import EMBEDDED_MODEL
from examples.demo import KEY_WIDTH, summarize
from trainers.cli import run_cli
from trainers.config import RLConfig


def questions(pairs: list[tuple[int, int]]) -> list[dict]:
    """RL prompts "What is a + b?" with their answers."""
    return [
        {"prompt": f"What is {a} + {b}? Reply with the number only.", "answer": str(a + b)}
        for a, b in pairs
    ]


ALL_PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]
random.Random(0).shuffle(ALL_PAIRS)
TEST = questions(ALL_PAIRS[:32])  # held out: the evaluator's questions
TRAIN = questions(ALL_PAIRS[32:])  # the 49 other sums of two digits


def final_number(text: str) -> str | None:
    """The last integer in a reply ("3 + 4 = 7." -> "7"), or None."""
    numbers = re.findall(r"-?\d+", text)
    return numbers[-1] if numbers else None


def reward(response: str, datum: dict) -> float:
    """1.0 when the reply's last number is the sum, else 0.0 (verifiable, no judge needed)."""
    return float(final_number(response) == datum["answer"])


def accuracy_eval(temperature: float = 0.0, name: str = "greedy"):
    """Accuracy on the held-out questions, graded like the reward."""
    from bios_callbacks.evaluators import QAEvaluator

    dataset = [{"input": q["prompt"], "target": q["answer"]} for q in TEST]
    return QAEvaluator(
        dataset,
        lambda response, target: final_number(response) == target,
        renderer_name="chatml",
        max_tokens=12,
        temperature=temperature,
        seed=0,
        name=name,
    )


def sampled_accuracy_eval():
    """Accuracy of replies sampled at the rollouts' temperature (1.0): what RL sharpens."""
    return accuracy_eval(temperature=1.0, name="sampled")


def arithmetic_settings() -> dict:
    """This example's RL settings; command-line words change them."""
    return {
        "model_name": EMBEDDED_MODEL,
        "train_data": TRAIN,
        "reward_fn": reward,
        "steps": 20,
        "batch_size": 4,
        "group_size": 8,
        "max_tokens": 12,
        "learning_rate": 2e-5,
        "evaluator_builders": [sampled_accuracy_eval, accuracy_eval],
        "eval_every": 5,
    }


def run(cfg: RLConfig, callbacks: Sequence[Any] = ()) -> None:
    """Trains as `cfg` says and prints the summary."""
    from trainers import rl

    result = rl.train(cfg, callbacks=callbacks)
    rewards = list(result.history["train/reward_mean"].values())
    k = min(5, len(rewards))
    print("\n=== summary ===")
    print(
        f"  {'train/reward_mean':<{KEY_WIDTH}} iter   0: {rewards[0]:.3f}   "
        f"mean of the last {k}: {statistics.fmean(rewards[-k:]):.3f}"
    )
    print("\n".join(summarize(cfg.run_dir)))
    print(f"final checkpoint: {result.checkpoint}")
    print(f"view it: tensorboard --logdir {cfg.run_dir}")


def main(argv: list[str]) -> int:
    return run_cli(RLConfig, run, argv, doc=__doc__, defaults=arithmetic_settings())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
