"""Offline evaluation with Inspect AI: a small task of our own, run on the embedded model.

The `capitals` task below is an ordinary Inspect task (MemoryDataset, `includes()` scorer); any
checkpoint can be evaluated on it from the command line:

    python -m bios_callbacks.eval.run_inspect_evals \\
        model_name=HuggingFaceTB/SmolLM2-135M-Instruct renderer_name=chatml \\
        tasks=examples/offline_inspect_eval.py@capitals

(results in `runs/base_model_evals/HuggingFaceTB--SmolLM2-135M-Instruct/`, or in
`<checkpoint>/evals/` with model_path=...), or with Inspect's own CLI (which logs to `./logs`
unless given `--log-dir`):

    inspect eval examples/offline_inspect_eval.py@capitals \\
        --model bios/HuggingFaceTB/SmolLM2-135M-Instruct -M renderer_name=chatml \\
        --log-dir runs/inspect_logs

Running this file does the same from Python: `python -m examples.offline_inspect_eval`.
"""

from __future__ import annotations

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Russia": "Moscow",
    "England": "London",
    "China": "Beijing",
}


@task
def capitals() -> Task:
    """Asks for capital cities; correct when the answer contains the city."""
    return Task(
        name="capitals",
        dataset=MemoryDataset(
            name="capitals",
            samples=[
                Sample(input=f"What is the capital of {country}?", target=city, id=country)
                for country, city in CAPITALS.items()
            ],
        ),
        solver=generate(),
        scorer=includes(),
    )


if __name__ == "__main__":
    from bios_callbacks.eval.run_inspect_evals import main
    from bios_callbacks.models import EMBEDDED_MODEL

    raise SystemExit(
        main(
            [
                f"model_name={EMBEDDED_MODEL}",
                "renderer_name=chatml",
                f"tasks={__file__}@capitals",
                "max_tokens=48",
            ]
        )
    )
