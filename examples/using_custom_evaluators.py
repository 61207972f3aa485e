"""The guide's "Using Custom Evaluators" listing: run `CustomEvaluator` on a model.

    python -m examples.using_custom_evaluators [model_path=bios://run/step_000016]

With no argument it evaluates the embedded base model; give a checkpoint (for example the one
`make demo` prints) to evaluate that instead.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import bios_callbacks as bios
from examples.custom_evaluator import CustomEvaluator
from trainers.cli import parse_args

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Define test dataset
QA_DATASET = [
    {"input": "What is the capital of France?", "output": "Paris"},
    {"input": "What is the capital of Germany?", "output": "Berlin"},
    {"input": "What is the capital of Italy?", "output": "Rome"},
]


# Simple grader function
def grader_fn(response: str, target: str) -> bool:
    return target.lower() in response.lower()


@dataclass
class Args:
    """The command line: the checkpoint to evaluate (default: the base model)."""

    model_path: str | None = None


def main(argv: list[str]) -> int:
    model_path = parse_args(Args, argv, doc=__doc__).model_path
    evaluator = CustomEvaluator(
        dataset=QA_DATASET,
        grader_fn=grader_fn,
        model_name=MODEL_NAME,
        renderer_name="chatml",
    )
    service_client = bios.ServiceClient()
    if model_path:
        sampling_client = service_client.create_sampling_client(model_path=model_path)
    else:
        sampling_client = service_client.create_sampling_client(base_model=MODEL_NAME)

    async def run():
        result = await evaluator(sampling_client)
        print(f"Evaluation Results: {result}")

    asyncio.run(run())
    sampling_client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
