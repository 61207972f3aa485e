"""Checkpoint directories: weights (or a LoRA adapter), tokenizer and `bios_checkpoint.json`.

A checkpoint is addressed by its directory or by `bios://<run>/<name>`, which means
`$BIOS_CHECKPOINT_ROOT/<run>/checkpoints/<name>` (the root defaults to `./runs`).

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bios_callbacks.atomic_dirs import atomic_directory
from bios_callbacks.model_loading import BIOS_URI_PREFIX, CHECKPOINT_METADATA_FILE

if TYPE_CHECKING:
    import torch

CHECKPOINT_ROOT_ENV = "BIOS_CHECKPOINT_ROOT"
WEIGHTS_FULL = "full"
WEIGHTS_LORA = "lora"


@dataclass
class CheckpointMetadata:
    """What `bios_checkpoint.json` records about a checkpoint.

    `weights` is "full" (the whole model) or "lora" (a peft adapter to apply on `base_model`).
    """

    base_model: str
    renderer_name: str
    step: int
    eval_results: dict[str, float] = field(default_factory=dict)
    created: str = ""
    library_version: str = ""
    weights: str = WEIGHTS_FULL


def checkpoint_root() -> Path:
    """`$BIOS_CHECKPOINT_ROOT`, or `./runs` when it is not set."""
    return Path(os.environ.get(CHECKPOINT_ROOT_ENV) or "runs").expanduser()


def checkpoint_dir(path_or_uri: str | os.PathLike[str]) -> Path:
    """The directory a checkpoint path or `bios://<run>/<name>` URI names (may not exist).

    A URI must name a directory inside `<root>/<run>/checkpoints`: `.`, `..` and names that are
    symbolic links to elsewhere are rejected.
    """
    text = str(path_or_uri)
    if not text.startswith(BIOS_URI_PREFIX):
        return Path(text).expanduser()
    parts = text[len(BIOS_URI_PREFIX) :].strip("/").split("/")
    if len(parts) != 2 or not all(parts) or {".", ".."} & set(parts):
        raise ValueError(
            f"Checkpoint URI {text!r} is malformed: expected bios://<run>/<name>, "
            "e.g. bios://my-run/step-100 (neither part may be '.' or '..')."
        )
    run, name = parts
    checkpoints = checkpoint_root() / run / "checkpoints"
    path = checkpoints / name
    if path.resolve().parent != checkpoints.resolve():
        raise ValueError(
            f"Checkpoint URI {text!r} leads to {path.resolve()}, outside the run's checkpoint "
            f"directory {checkpoints.resolve()}: expected bios://<run>/<name> to name a "
            "checkpoint of that run. Pass the checkpoint's directory path instead."
        )
    return path


def resolve_model_path(path_or_uri: str | os.PathLike[str]) -> Path:
    """The existing checkpoint directory for a path or `bios://<run>/<name>` URI.

    Example:
        >>> resolve_model_path("bios://my-run/step-100")  # doctest: +SKIP
        PosixPath('runs/my-run/checkpoints/step-100')
    """
    path = checkpoint_dir(path_or_uri)
    if not (path / CHECKPOINT_METADATA_FILE).is_file():
        problem = "does not exist" if not path.exists() else f"has no {CHECKPOINT_METADATA_FILE}"
        raise FileNotFoundError(
            f"No checkpoint at {path_or_uri!r}: {path.resolve()} {problem}. bios:// URIs are "
            f"looked up under the checkpoint root {checkpoint_root().resolve()} "
            f"(set {CHECKPOINT_ROOT_ENV} to change it); save checkpoints with save_checkpoint()."
        )
    return path


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
    eval_results: dict[str, float] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` (or its LoRA adapter, for a peft model), `tokenizer` and metadata to `path`.

    `path` may be a directory or `bios://<run>/<name>`. The checkpoint is written into a staging
    directory next to it and swapped into place, so an older checkpoint of the same name stays
    whole until the new one is complete. Only a checkpoint or an empty directory is replaced;
    anything else at `path` is an error. `extra_files(directory)` may add files (e.g. trainer
    state) to the checkpoint before it appears. A LoRA checkpoint records a directory or
    `bios://` `base_model` as an absolute path. Returns the checkpoint directory.

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
    metadata = CheckpointMetadata(
        base_model=_absolute_base(base_model) if is_lora else base_model,
        renderer_name=renderer_name,
        step=step,
        eval_results=dict(eval_results or {}),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        library_version=_library_version(),
        weights=WEIGHTS_LORA if is_lora else WEIGHTS_FULL,
    )
    with atomic_directory(target, replace=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if extra_files is not None:
            extra_files(staging)
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


def read_checkpoint_metadata(path_or_uri: str | os.PathLike[str]) -> CheckpointMetadata:
    """The `bios_checkpoint.json` of a checkpoint directory or `bios://` URI."""
    file = resolve_model_path(path_or_uri) / CHECKPOINT_METADATA_FILE
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Checkpoint metadata {file} is not valid JSON ({error}); the checkpoint was "
            "damaged or written by something else. Save it again with save_checkpoint."
        ) from error
    if not isinstance(raw, dict):
        raise ValueError(f"Checkpoint metadata {file} must hold a JSON object, got {raw!r}.")
    required = ("base_model", "renderer_name", "step")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ValueError(
            f"Checkpoint metadata {file} is missing {', '.join(missing)}; it needs "
            f"{', '.join(required)}. Re-save the checkpoint with save_checkpoint()."
        )
    known = CheckpointMetadata.__dataclass_fields__
    metadata = CheckpointMetadata(**{k: v for k, v in raw.items() if k in known})
    if not isinstance(metadata.step, int) or metadata.step < 0:
        raise ValueError(f"Checkpoint metadata {file}: step={metadata.step!r} is not an int >= 0.")
    if metadata.weights not in (WEIGHTS_FULL, WEIGHTS_LORA):
        raise ValueError(
            f"Checkpoint metadata {file}: weights={metadata.weights!r}; expected "
            f"{WEIGHTS_FULL!r} or {WEIGHTS_LORA!r}."
        )
    return metadata


def load_checkpoint(
    path_or_uri: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    trainable: bool = False,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` from a checkpoint; a LoRA checkpoint gives a peft `PeftModel`
    (its adapter trainable only with `trainable=True`, for training it further).

    Prefer `bios_callbacks.model_loading.load_model`, which also takes hub ids and directories.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    path = resolve_model_path(path_or_uri)
    metadata = read_checkpoint_metadata(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if metadata.weights == WEIGHTS_LORA:
        from peft import PeftModel

        from bios_callbacks.model_loading import load_model

        base, _ = load_model(metadata.base_model, dtype=dtype)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer
