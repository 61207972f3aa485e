"""Checkpoints: save, load and inspect them (the documented home of these names; the code
lives in `bios_callbacks.models`).

A checkpoint is a directory with the weights (or a LoRA adapter), the tokenizer and
`bios_checkpoint.json`, addressed by its path or by `bios://<run>/<name>`, which means
`$BIOS_CHECKPOINT_ROOT/<run>/checkpoints/<name>` (the root defaults to `./runs`).

Example:
    >>> from bios_callbacks.checkpoints import save_checkpoint, read_checkpoint_metadata
    >>> path = save_checkpoint("bios://my-run/step-100", model, tokenizer,  # doctest: +SKIP
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct", renderer_name="chatml", step=100)
    >>> read_checkpoint_metadata(path).step  # doctest: +SKIP
    100
"""

from __future__ import annotations

from typing import Any

from bios_callbacks.models.references import (
    CHECKPOINT_ROOT_ENV,
    CheckpointMetadata,
    checkpoint_dir,
    checkpoint_root,
    read_checkpoint_metadata,
    resolve_model_path,
)
from bios_callbacks.models.saving import save_checkpoint

__all__ = [
    "CHECKPOINT_ROOT_ENV",
    "CheckpointMetadata",
    "checkpoint_dir",
    "checkpoint_root",
    "load_checkpoint",
    "read_checkpoint_metadata",
    "resolve_model_path",
    "save_checkpoint",
]


def load_checkpoint(path_or_uri: Any, *, dtype: Any = None, trainable: bool = False) -> Any:
    """Loads `(model, tokenizer)` from a checkpoint (see `bios_callbacks.models.load_checkpoint`;
    imported on first use, so this module stays free of torch)."""
    from bios_callbacks.models.loading import load_checkpoint as load

    return load(path_or_uri, dtype=dtype, trainable=trainable)
