"""LLM-as-judge with Inspect AI: the guide's listing, graded by a local model.

The model under test and the grader are both bios sampling clients (here the same embedded
model; pass a checkpoint's client as the grader to use another). The grader gets its own
generation settings through its `Model`'s `GenerateConfig`.

    python -m examples.llm_as_judge
"""

from __future__ import annotations

from inspect_ai import Task, eval, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import GenerateConfig, Model
from inspect_ai.scorer import model_graded_qa
from inspect_ai.solver import generate

import bios_callbacks as bios
from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling
from bios_callbacks.models import EMBEDDED_MODEL

QA_DATASET = MemoryDataset(
    name="qa_dataset",
    samples=[
        Sample(input="What is the capital of France?", target="Paris"),
        Sample(input="What is the capital of Italy?", target="Rome"),
    ],
)

@task
def example_lm_as_judge() -> Task:
    return Task(
        name="llm_as_judge",
        dataset=QA_DATASET,
        solver=generate(),
        scorer=model_graded_qa(
            instructions="Grade strictly. Respond 'GRADE: C' if correct or 'GRADE: I' otherwise.",
            partial_credit=False,
        ),
    )


def main() -> None:
    """Evaluates the embedded model, graded by a second `Model` over the same client."""
    sampling_client = bios.ServiceClient().create_sampling_client(base_model=EMBEDDED_MODEL)
    api = InspectAPIFromBiosSampling(
        renderer_name="chatml",
        model_name=EMBEDDED_MODEL,
        sampling_client=sampling_client,
        verbose=False,
    )
    grader = Model(api, GenerateConfig(temperature=0.0, max_tokens=64, max_connections=32))
    [log] = eval(
        example_lm_as_judge(),
        model=Model(api, GenerateConfig(max_tokens=48, max_connections=32)),
        model_roles={"grader": grader},
        display="none",
    )
    sampling_client.close()
    print({name: m.value for name, m in log.results.scores[0].metrics.items()})


if __name__ == "__main__":
    main()
