"""Saving a checkpoint: weights (or a LoRA adapter), tokenizer and `bios_checkpoint.json`,
written into a staging directory and swapped into place (`atomic_dirs`).

Example:
    >>> from bios_callbacks.checkpoints import save_checkpoint, read_checkpoint_metadata
    >>> path = save_checkpoint("bios://my-run/step-100", model, tokenizer,  # doctest: +SKIP
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct", renderer_name="chatml", step=100)
    >>> read_checkpoint_metadata(path).step  # doctest: +SKIP
    100
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bios_callbacks.models.atomic_dirs import atomic_directory
from bios_callbacks.models.references import (
    BIOS_URI_PREFIX,
    CHECKPOINT_METADATA_FILE,
    WEIGHTS_FULL,
    WEIGHTS_LORA,
    CheckpointMetadata,
    checkpoint_dir,
    resolve_model_path,
)


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bios-callbacks")
    except PackageNotFoundError:
        return "unknown"


def _is_peft_model(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Any,
    tokenizer: Any,
    *,
    base_model: str,
    renderer_name: str,
    step: int,
    eval_results: Mapping[str, float] | Callable[[], Mapping[str, float]] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` (or its LoRA adapter, for a peft model), `tokenizer` and metadata to `path`.

    `path` may be a directory or `bios://<run>/<name>`. The checkpoint is written into a staging
    directory next to it and swapped into place, so an older checkpoint of the same name stays
    whole until the new one is complete. Only a checkpoint or an empty directory is replaced;
    anything else at `path` is an error. `extra_files(directory)` may add files (e.g. trainer
    state) to the checkpoint before it appears. `eval_results` may be a function, called after
    `extra_files`, for results that writing those files completes (the trainers' checkpoints:
    saving Lightning's state logs a pending background evaluation round first). A LoRA
    checkpoint records a directory or `bios://` `base_model` as an absolute path. Returns the
    checkpoint directory.

    Example:
        >>> save_checkpoint("runs/demo/checkpoints/final", model, tokenizer,  # doctest: +SKIP
        ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct", renderer_name="chatml", step=50)
    """
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}: expected the number of optimizer steps, an int >= 0.")
    target = checkpoint_dir(path)
    if target.name in ("", ".."):
        raise ValueError(
            f"Checkpoint path {str(path)!r} does not name a directory of its own: expected a "
            "new or checkpoint directory such as runs/my-run/checkpoints/step-100."
        )
    _check_replaceable(target)
    is_lora = _is_peft_model(model)
    base = _absolute_base(base_model) if is_lora else base_model
    with atomic_directory(target, replace=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if extra_files is not None:
            extra_files(staging)
        results = eval_results() if callable(eval_results) else eval_results
        metadata = CheckpointMetadata(
            base_model=base,
            renderer_name=renderer_name,
            step=step,
            eval_results=dict(results or {}),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            library_version=_library_version(),
            weights=WEIGHTS_LORA if is_lora else WEIGHTS_FULL,
        )
        (staging / CHECKPOINT_METADATA_FILE).write_text(json.dumps(asdict(metadata), indent=2))
    return target


def _check_replaceable(target: Path) -> None:
    """Refuse a target that saving would delete: anything but a checkpoint or an empty dir."""
    if target.is_symlink():
        raise FileExistsError(
            f"Cannot save a checkpoint at {target}: it is a symbolic link (to "
            f"{target.resolve()}). Save to the directory it points to, or choose a new path."
        )
    if not target.exists() or (target / CHECKPOINT_METADATA_FILE).is_file():
        return
    if not target.is_dir():
        raise FileExistsError(
            f"Cannot save a checkpoint at {target}: it is a file. Choose a new directory path."
        )
    entries = sorted(entry.name for entry in target.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"Cannot save a checkpoint at {target}: it is a directory that is not a checkpoint "
            f"(no {CHECKPOINT_METADATA_FILE}) and holds {shown}, which saving would delete. "
            "Choose a new path, or an existing checkpoint to replace."
        )


def _absolute_base(base_model: str) -> str:
    """A directory or `bios://` base model as an absolute path (it must not depend on the
    working directory or `$BIOS_CHECKPOINT_ROOT` when the adapter is loaded); hub ids as is."""
    if base_model.startswith(BIOS_URI_PREFIX):
        return str(resolve_model_path(base_model).resolve())
    path = Path(base_model).expanduser()
    return str(path.resolve()) if path.is_dir() else base_model
