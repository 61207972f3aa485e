"""RL on a verifiable task: small additions, reward 1 when the reply is exactly the sum.

Each iteration samples `group_size` replies per question from the current weights, rewards the
exact ones, and pushes the policy toward replies that beat their group's average. A QA
evaluator on held-out questions (greedy) runs every `eval_every` iterations.

    python -m examples.rl_arithmetic [steps=20 batch_size=4 group_size=8 learning_rate=5e-5 ...]
"""

from __future__ import annotations

import random
import re
import sys

from trainers.config import EMBEDDED_MODEL, RLConfig


def questions(seed: int, count: int) -> list[dict]:
    """`count` questions "a + b" with a, b in 1..9, as RL prompts with their answers."""
    rng = random.Random(seed)
    pairs = [(rng.randint(1, 9), rng.randint(1, 9)) for _ in range(count)]
    return [
        {"prompt": f"What is {a} + {b}? Reply with the number only.", "answer": str(a + b)}
        for a, b in pairs
    ]


def reward(response: str, datum: dict) -> float:
    """1.0 when the reply is exactly the number, 0.5 when the number is in a longer reply."""
    text = response.strip().rstrip(".")
    if text == datum["answer"]:
        return 1.0
    return 0.5 if re.search(rf"\b{datum['answer']}\b", text) else 0.0


TEST = questions(seed=1, count=16)


def exact_eval():
    """Greedy exact-answer accuracy on held-out questions."""
    from bios_callbacks.evaluators import QAEvaluator

    dataset = [{"input": q["prompt"], "target": q["answer"]} for q in TEST]
    return QAEvaluator(
        dataset,
        lambda response, target: response.strip().rstrip(".") == target,
        renderer_name="chatml",
        max_tokens=8,
        name="arithmetic",
    )


def main(argv: list[str]) -> int:
    from trainers import rl

    held_out = {q["prompt"] for q in TEST}  # train on the other pairs
    train_prompts = [q for q in questions(seed=0, count=200) if q["prompt"] not in held_out]
    defaults = {
        "model_name": EMBEDDED_MODEL,
        "train_data": train_prompts,
        "reward_fn": reward,
        "steps": 20,
        "batch_size": 4,
        "group_size": 8,
        "max_tokens": 12,
        "learning_rate": 5e-5,
        "evaluator_builders": [exact_eval],
        "eval_every": 5,
    }
    cfg = RLConfig.from_dict({**defaults, **RLConfig.parse_cli(argv)})
    result = rl.train(cfg)
    print(f"final metrics: { {k: round(v, 3) for k, v in sorted(result.metrics.items())} }")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
