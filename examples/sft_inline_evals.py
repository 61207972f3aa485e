"""The guide's "SFT Inline Evaluations" config, as a short runnable SFT run on the embedded model.

    python -m examples.sft_inline_evals [steps=4 ...]

Two regular evaluators (held-out loss and strict-format QA accuracy) run every `eval_every`
steps; an expensive Inspect AI task runs every `infrequent_eval_every` steps. The data is the
`make demo` capitals task.
"""

from __future__ import annotations

import sys

from bios_callbacks.models import EMBEDDED_MODEL
from examples.demo import (
    TEST_CAPITALS,
    capitals_data,
    capitals_task,
    conversation,
    format_eval,
)
from trainers.cli import run_cli
from trainers.config import SFTConfig


def eval_builder_1():
    """Held-out loss on the test conversations (a TrainingClientEvaluator)."""
    from bios_callbacks.evaluators import NLLEvaluator
    from bios_callbacks.renderers import get_renderer
    from bios_callbacks.tokenizer_utils import get_tokenizer

    renderer = get_renderer(name="chatml", tokenizer=get_tokenizer(EMBEDDED_MODEL))
    held_out = [conversation(c, city)["messages"] for c, city in TEST_CAPITALS]
    return NLLEvaluator([renderer.build_supervised_example(m) for m in held_out], name="heldout")


eval_builder_2 = format_eval  # strict-format QA accuracy (a SamplingClientEvaluator)


def guide_config() -> dict:
    """The guide's config keys plus this example's model, data and length."""
    from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder

    expensive_eval = InspectEvaluatorBuilder(
        tasks=[capitals_task()],
        renderer_name="chatml",
        max_tokens=24,  # a city, not an essay
    )
    # Add to supervised training config
    config = {
        # Regular evaluations
        "evaluator_builders": [eval_builder_1, eval_builder_2],
        "eval_every": 2,  # the guide uses 100; this run is 4 steps long
        # Infrequent (expensive) evaluations
        "infrequent_evaluator_builders": [expensive_eval],
        "infrequent_eval_every": 4,  # the guide uses 500
    }
    return config | {**capitals_data(), "steps": 4}


def main(argv: list[str]) -> int:
    from trainers import sft

    return run_cli(SFTConfig, sft.train, argv, doc=__doc__, defaults=guide_config())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
