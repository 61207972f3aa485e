"""Inline and offline evaluations for fine-tuning language models with PyTorch Lightning.

Example:
    >>> import bios_callbacks as bios
    >>> client = bios.ServiceClient().create_sampling_client(
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP

Names resolve lazily, so `import bios_callbacks` stays quick (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ServiceClient": "bios_callbacks.sampling.service",
    "SamplingClient": "bios_callbacks.sampling.client",
    "TrainingClient": "bios_callbacks.training_client",
    "EvalCallback": "bios_callbacks.callback",
}
_SUBMODULES = {"types", "renderers", "evaluators", "tokenizer_utils", "checkpoints", "eval"}

__all__ = [
    "EvalCallback",
    "SamplingClient",
    "ServiceClient",
    "TrainingClient",
    "checkpoints",
    "eval",
    "evaluators",
    "renderers",
    "tokenizer_utils",
    "types",
]

if TYPE_CHECKING:
    from bios_callbacks.callback import EvalCallback
    from bios_callbacks.sampling.client import SamplingClient
    from bios_callbacks.sampling.service import ServiceClient
    from bios_callbacks.training_client import TrainingClient


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"bios_callbacks.{name}")
    raise AttributeError(f"module 'bios_callbacks' has no attribute {name!r}")
