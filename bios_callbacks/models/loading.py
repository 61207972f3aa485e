"""Load a causal LM and its tokenizer from a name, a directory or a checkpoint.

`load_model` accepts the embedded model `EMBEDDED_MODEL`, a checkpoint written by
`save_checkpoint` (a directory or `bios://<run>/<name>`), a local Hugging Face model
directory, or any other hub id (local cache first; the network only when not offline).

Example:
    >>> from bios_callbacks.models import EMBEDDED_MODEL, load_model
    >>> model, tokenizer = load_model(EMBEDDED_MODEL)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bios_callbacks.models.hub import hub_error, resolve_pretrained_source
from bios_callbacks.models.references import (
    WEIGHTS_LORA,
    is_checkpoint_ref,
    read_checkpoint_metadata,
    resolve_model_path,
)

if TYPE_CHECKING:
    import torch


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """Load the tokenizer for a model name, directory or checkpoint (uncached).

    Prefer `bios_callbacks.tokenizer_utils.get_tokenizer`, which caches.
    """
    from transformers import AutoTokenizer

    if is_checkpoint_ref(name_or_path):
        return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    return _from_pretrained(AutoTokenizer, name_or_path, resolve_pretrained_source(name_or_path))


def load_model(
    name_or_path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)`; the model is in eval mode, in `dtype` (default float32).

    Example:
        >>> model, tokenizer = load_model("bios://my-run/step-100")  # doctest: +SKIP
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if is_checkpoint_ref(name_or_path):
        return load_checkpoint(name_or_path, dtype=dtype)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_pretrained_source(name_or_path)  # once: it may convert or probe caches
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, resolved, dtype=dtype)
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, resolved)
    return model.eval(), tokenizer


def load_checkpoint(
    path_or_uri: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    trainable: bool = False,
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)` from a checkpoint; a LoRA checkpoint gives a peft `PeftModel`
    (its adapter trainable only with `trainable=True`, for training it further).

    Prefer `load_model`, which also takes hub ids and directories.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if dtype is None else dtype
    path = resolve_model_path(path_or_uri)
    metadata = read_checkpoint_metadata(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if metadata.weights == WEIGHTS_LORA:
        from peft import PeftModel

        base, _ = load_model(metadata.base_model, dtype=dtype)
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.eval(), tokenizer


def _from_pretrained(
    auto_class: Any, name_or_path: str | os.PathLike[str], resolved: tuple[str, bool], **kwargs: Any
) -> Any:
    """`auto_class.from_pretrained` on a resolved source; a hub failure says how to go offline."""
    source, local_only = resolved
    try:
        return auto_class.from_pretrained(source, local_files_only=local_only, **kwargs)
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise hub_error(str(name_or_path), error) from error


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Turns off transformers' progress bars (loading or writing shards) inside, if they were
    on: for code that prints its own lines per checkpoint.

    Example:
        >>> with no_progress_bars():  # doctest: +SKIP
        ...     model, tokenizer = load_model(path)
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
