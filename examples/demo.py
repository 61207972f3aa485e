"""`make demo`: fine-tune the embedded SmolLM2-135M-Instruct on a strict answer format and watch
the inline evaluations improve.

The task: answer "Capital of <country>?" with exactly "Answer: <city>". The base model knows
many capitals but answers in a sentence, so its strict-format accuracy starts near 0. A short
SFT run on other countries teaches the format; the held-out countries show whether it sticks.

    python -m examples.demo [steps=16 batch_size=8 learning_rate=1e-4 ...]
    python -m examples.demo logger=wandb    # or logger=mlflow / logger=csv (default tensorboard)
    python -m examples.demo --help      # every key and this demo's settings

It writes everything under `$BIOS_CHECKPOINT_ROOT/demo-<time>-<random>` (root `./runs`):
the logger's files (TensorBoard events by default), `eval_results.jsonl`, `inspect_logs/` and
`checkpoints/`. With `logger=wandb`, `WANDB_MODE=offline` needs no network; `logger=mlflow`
keeps a local MLflow store in the run directory unless `$MLFLOW_TRACKING_URI` names one.

Evaluations: the test loss and a regular QA evaluator (strict format) every `eval_every` steps
and an infrequent Inspect AI task (is the right city named at all?) every
`infrequent_eval_every` steps. At the end it prints each metric at step 0 and at the last step
with its 95% interval, the checkpoint, how to view the logs and the compare command for the run.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from bios_callbacks.models import EMBEDDED_MODEL
from trainers.cli import run_cli
from trainers.config import SFTConfig, default_run_name

TRAIN_CAPITALS = [
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Ireland", "Dublin"),
    ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"),
    ("Switzerland", "Bern"),
    ("Czech Republic", "Prague"),
    ("Turkey", "Ankara"),
    ("India", "New Delhi"),
    ("Thailand", "Bangkok"),
    ("Indonesia", "Jakarta"),
    ("South Korea", "Seoul"),
    ("Vietnam", "Hanoi"),
    ("Philippines", "Manila"),
    ("Kenya", "Nairobi"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogota"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"),
    ("Pakistan", "Islamabad"),
]
TEST_CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("the United Kingdom", "London"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"),
    ("Australia", "Canberra"),
    ("Brazil", "Brasilia"),
    ("the United States", "Washington"),
    ("Ukraine", "Kyiv"),
]


def question(country: str) -> str:
    """The prompt for one country."""
    return f"Capital of {country}?"


def conversation(country: str, city: str) -> dict:
    """One SFT example in the strict format."""
    return {
        "messages": [
            {"role": "user", "content": question(country)},
            {"role": "assistant", "content": f"Answer: {city}"},
        ]
    }


def capitals_data() -> dict:
    """The capitals conversations and the batch and learning rate that fit them."""
    return {
        "train_data": [conversation(c, city) for c, city in TRAIN_CAPITALS],
        "test_data": [conversation(c, city) for c, city in TEST_CAPITALS],
        "batch_size": 8,
        "learning_rate": 1e-4,
    }


def strict_format(response: str, target: str) -> bool:
    """Grader: the whole reply must be exactly "Answer: <city>"."""
    return response.strip() == f"Answer: {target}"


def format_eval():
    """Regular evaluator builder: strict-format accuracy on the held-out countries."""
    from bios_callbacks.evaluators import QAEvaluator

    dataset = [{"input": question(c), "target": city} for c, city in TEST_CAPITALS]
    return QAEvaluator(
        dataset, strict_format, renderer_name="chatml", max_tokens=12, name="strict_format"
    )


def capitals_task():
    """An Inspect AI task: does the reply name the right city (any wording)?"""
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate

    samples = [Sample(input=question(c), target=city) for c, city in TEST_CAPITALS]
    return Task(
        name="capitals",
        dataset=MemoryDataset(samples, name="capitals"),
        solver=generate(),
        scorer=includes(),
    )


KEY_WIDTH = 36  # the summary's metric-name column


def summarize(run_dir) -> list[str]:
    """Each eval score at the first and the last evaluated step with its 95% interval (as
    `python -m bios_callbacks.eval.compare` shows it), as printable lines."""
    from bios_callbacks.eval.compare import load_run

    results = load_run(str(run_dir), "demo")
    lines = []
    for key, points in sorted(results.series.items()):
        first, last = min(points), max(points)
        lines.append(
            f"  {key:<{KEY_WIDTH}} step {first:>3}: {points[first].text():<21}  "
            f"step {last:>3}: {points[last].text()}"
        )
    return lines


def demo_settings() -> dict:
    """The demo's SFT settings; command-line words change them."""
    from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder

    return {
        "model_name": EMBEDDED_MODEL,
        "renderer_name": "chatml",
        **capitals_data(),
        "steps": 16,
        "evaluator_builders": [format_eval],
        "eval_every": 4,
        "infrequent_evaluator_builders": [
            InspectEvaluatorBuilder(
                tasks=[capitals_task()],
                renderer_name="chatml",
                model_name=EMBEDDED_MODEL,
                max_tokens=24,
            )
        ],
        "infrequent_eval_every": 16,
        "run_name": default_run_name("demo"),
        "seed": 0,
    }


def run(cfg: SFTConfig, callbacks: Sequence[Any] = ()) -> None:
    """Trains as `cfg` says and prints the summary."""
    from trainers import sft
    from trainers.policy import view_hint

    started = time.perf_counter()
    result = sft.train(cfg, callbacks=callbacks)
    print("\n=== demo summary ===")
    print("eval metrics, first vs last evaluated step:")
    print("\n".join(summarize(cfg.run_dir)))
    print("(± and [low, high] are 95% intervals: a change inside them may be noise)")
    print(f"final checkpoint: {result.checkpoint}")
    print(f"view it: {view_hint(cfg)}")
    print("compare its steps (add ,<another run> to runs= to compare two runs):")
    print(
        f"  python -m bios_callbacks.eval.compare runs={cfg.run_dir} plot={cfg.run_dir}/curves.png"
    )
    print(f"total time: {time.perf_counter() - started:.0f}s")


def main(argv: list[str]) -> int:
    return run_cli(SFTConfig, run, argv, doc=__doc__, defaults=demo_settings())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
