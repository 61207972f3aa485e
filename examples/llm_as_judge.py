"""LLM-as-judge with Inspect AI: the guide's listing, graded by a local model.

The model under test and the grader are both bios sampling clients (here the same embedded
SmolLM2-135M; pass a checkpoint's client as the grader to use another), and the grader gets its
own generation settings through its own `Model`.

A 135M grader asked the guide's way ("Respond 'GRADE: C' if correct or 'GRADE: I' otherwise")
rambles to its token limit without a verdict, and Inspect leaves that sample unscored: the
accuracy then counts the other samples only. Two settings make it answer every time:

- `response_prefix="GRADE:"` on the grader's API: its reply starts with "GRADE:" (prefilled),
  so the very next token is its verdict;
- `max_tokens=4` for the grader: the verdict is all it needs to write.

Every sample is then scored, and the printout shows each answer with its grade and how many
samples were scored. A model this small is a weak judge, though: on 24 answers about capitals,
half of them wrong, its verdicts were no better than chance. It shows the mechanics here; grade
real evaluations with a stronger model.

    python -m examples.llm_as_judge [log_dir=DIR]
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from inspect_ai import Task, eval, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.log import EvalLog
from inspect_ai.model import GenerateConfig, Model
from inspect_ai.scorer import model_graded_qa
from inspect_ai.solver import generate

import bios_callbacks as bios
from bios_callbacks.checkpoints import checkpoint_root
from bios_callbacks.eval.inspect_runner import result_from_log
from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling
from bios_callbacks.models import EMBEDDED_MODEL
from trainers.cli import parse_args

QA_DATASET = MemoryDataset(
    name="qa_dataset",
    samples=[
        Sample(input="What is the capital of France?", target="Paris"),
        Sample(input="What is the capital of Italy?", target="Rome"),  # the 135M model errs
    ],
)
GRADER_INSTRUCTIONS = (
    "Reply with one line, GRADE: C if the submission is correct or GRADE: I if it is incorrect."
)


@task
def example_lm_as_judge() -> Task:
    """The guide's task, with instructions whose format the prefilled "GRADE:" continues."""
    return Task(
        name="llm_as_judge",
        dataset=QA_DATASET,
        solver=generate(),
        scorer=model_graded_qa(instructions=GRADER_INSTRUCTIONS, partial_credit=False),
    )


def judge(log_dir: str | Path | None = None) -> EvalLog:
    """Runs the task on the embedded model, graded by the same model; returns Inspect's log.

    The log goes to `log_dir` (default `$BIOS_CHECKPOINT_ROOT/llm_as_judge`, i.e. under ./runs).

    Example:
        >>> log = judge()  # doctest: +SKIP
        >>> [s.scores["model_graded_qa"].value for s in log.samples]  # doctest: +SKIP
        ['C', 'I']
    """
    sampling_client = bios.ServiceClient().create_sampling_client(base_model=EMBEDDED_MODEL)
    try:
        api = InspectAPIFromBiosSampling(
            renderer_name="chatml",
            model_name=EMBEDDED_MODEL,
            sampling_client=sampling_client,
            verbose=False,
        )
        grader_api = InspectAPIFromBiosSampling(
            renderer_name="chatml",
            model_name=EMBEDDED_MODEL,
            sampling_client=sampling_client,
            response_prefix="GRADE:",
        )
        grader = Model(grader_api, GenerateConfig(temperature=0.0, max_tokens=4))
        [log] = eval(
            example_lm_as_judge(),
            model=Model(api, GenerateConfig(max_tokens=48, max_connections=32)),
            model_roles={"grader": grader},
            log_dir=str(log_dir or checkpoint_root() / "llm_as_judge"),
            display="none",
        )
    finally:
        sampling_client.close()
    return log


@dataclass
class Args:
    """The command line: where the Inspect log goes (default under the checkpoint root)."""

    log_dir: str | None = None


def main(argv: list[str]) -> int:
    """Prints each answer with its grade, then the metrics with the scored count."""
    log = judge(parse_args(Args, argv, doc=__doc__).log_dir)
    for sample in log.samples or []:
        score = sample.scores["model_graded_qa"]
        unscored = isinstance(score.value, float) and math.isnan(score.value)
        grade = f"unscored ({score.explanation})" if unscored else score.value
        print(f"{sample.input} -> {sample.output.completion!r} (target {sample.target}): {grade}")
    for name, value in result_from_log(log).metrics.items():
        print(f"{name}: {value:g}")
    print(f"Inspect log: {log.location}")
    return 0 if log.status == "success" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
