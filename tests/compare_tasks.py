"""An Inspect task whose per-sample grades vary with the model, for the compare tests."""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, accuracy, scorer, stderr
from inspect_ai.solver import generate


@scorer(metrics=[accuracy(), stderr()])
def even_length():
    """1 when the reply has an even number of characters: a random model passes about half."""

    async def score(state, target):
        return Score(value=float(len(state.output.completion) % 2 == 0))

    return score


@task
def parity(n: int = 8) -> Task:
    """`n` prompts graded by `even_length`."""
    return Task(
        name="parity",
        dataset=MemoryDataset([Sample(input=f"Say {i}", target="", id=i) for i in range(n)]),
        solver=generate(),
        scorer=even_length(),
        config=GenerateConfig(max_tokens=4),
    )
