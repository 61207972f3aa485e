"""Small Inspect tasks for the Inspect bridge tests (no hub, no downloads)."""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample, hf_dataset
from inspect_ai.scorer import Score, accuracy, match, scorer
from inspect_ai.solver import generate


@task
def echo(n: int = 4) -> Task:
    """`n` short prompts scored with `match` (mechanics only: a random model gets 0)."""
    return Task(
        name="echo",
        dataset=MemoryDataset([Sample(input=f"Say {i}", target=str(i), id=i) for i in range(n)]),
        solver=generate(),
        scorer=match(),
    )


@scorer(metrics=[accuracy()])
def fails_on_sample_one():
    """Scores 1, except that it raises on sample id 1."""

    async def score(state, target):
        if state.sample_id == 1:
            raise RuntimeError("scorer broke on sample 1")
        return Score(value=1.0)

    return score


@task
def partly_broken() -> Task:
    """Four samples, one of which errors in scoring."""
    return Task(
        name="partly_broken",
        dataset=MemoryDataset([Sample(input=f"Say {i}", target="x", id=i) for i in range(4)]),
        solver=generate(),
        scorer=fails_on_sample_one(),
    )


@task
def needs_hub() -> Task:
    """A task whose dataset lives on the Hugging Face hub."""
    return Task(dataset=hf_dataset("openai/gsm8k", split="test", name="main"), solver=generate())
