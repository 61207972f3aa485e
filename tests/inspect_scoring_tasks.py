"""Inspect tasks whose scorers leave samples unscored (no hub, no downloads)."""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Score, accuracy, model_graded_qa, scorer
from inspect_ai.solver import generate


@scorer(metrics=[accuracy()])
def verdict_on_even_ids():
    """Scores 1 on even sample ids; gives no verdict (Score.unscored) on odd ones."""

    async def score(state, target):
        if state.sample_id % 2:
            return Score.unscored(reason="no_verdict", explanation="the judge said nothing")
        return Score(value=1.0)

    return score


@task
def half_unscored() -> Task:
    """Four samples, two of which get no score."""
    return Task(
        name="half_unscored",
        dataset=MemoryDataset([Sample(input=f"Say {i}", target="x", id=i) for i in range(4)]),
        solver=generate(),
        scorer=verdict_on_even_ids(),
        config=GenerateConfig(max_tokens=2),
    )


@task
def judged() -> Task:
    """Three samples graded by `model_graded_qa` (a random model never writes GRADE: X)."""
    return Task(
        name="judged",
        dataset=MemoryDataset([Sample(input=f"Say {i}", target=str(i), id=i) for i in range(3)]),
        solver=generate(),
        scorer=model_graded_qa(),
        config=GenerateConfig(max_tokens=3),
    )
