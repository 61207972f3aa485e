"""Inspect AI entry point: registers the `bios/` model provider.

Declared in pyproject under `[project.entry-points.inspect_ai]`, so Inspect loads it on demand and
its own CLI can evaluate our models:

    inspect eval tasks.py@my_task --model bios/HuggingFaceTB/SmolLM2-135M-Instruct
    inspect eval tasks.py@my_task --model bios/runs/demo/checkpoints/final -M renderer_name=chatml

The name after `bios/` is a hub id, a local model directory, a checkpoint directory (relative,
or absolute: `bios//abs/ckpt` and `bios/abs/ckpt` both work) or a `bios://run/name` URI.
Inspect's `--max-connections` sets how many samples batch together; `inspect eval` writes its
logs to `./logs` unless given `--log-dir`.
"""

from __future__ import annotations

from inspect_ai.model import ModelAPI, modelapi


@modelapi(name="bios")
def bios() -> type[ModelAPI]:
    """The bios sampling-client provider (imported only when a `bios/` model is used)."""
    from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling

    return InspectAPIFromBiosSampling
