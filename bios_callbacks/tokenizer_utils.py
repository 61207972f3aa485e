"""Cached tokenizer lookup by model name, directory or checkpoint, and a registry of your own.

Example:
    >>> from bios_callbacks.tokenizer_utils import get_tokenizer
    >>> tokenizer = get_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> tokenizer.eos_token  # doctest: +SKIP
    '<|im_end|>'
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    Tokenizer: TypeAlias = PreTrainedTokenizerBase
else:
    Tokenizer: TypeAlias = Any
    """A Hugging Face tokenizer (`PreTrainedTokenizerBase`; a plain alias at run time, so
    importing this module does not import transformers)."""

_REGISTRY: dict[str, Callable[[], Any]] = {}


def register_tokenizer(name: str, factory: Callable[[], Any]) -> None:
    """Makes `get_tokenizer(name)` return `factory()` (called on every lookup, uncached).

    Example:
        >>> register_tokenizer("acme/tok", lambda: "a tokenizer")
        >>> get_tokenizer("acme/tok")
        'a tokenizer'
        >>> unregister_tokenizer("acme/tok")
        True
    """
    if not callable(factory):
        raise TypeError(f"register_tokenizer({name!r}, ...) needs a callable, got {factory!r}")
    _REGISTRY[name] = factory


def unregister_tokenizer(name: str) -> bool:
    """Removes a registered tokenizer; False if `name` was not registered."""
    return _REGISTRY.pop(name, None) is not None


def get_registered_tokenizer_names() -> list[str]:
    """Names added with `register_tokenizer`."""
    return list(_REGISTRY)


def is_tokenizer_registered(name: str) -> bool:
    """Whether `name` was added with `register_tokenizer`."""
    return name in _REGISTRY


def get_tokenizer(model_name: str) -> Any:
    """The tokenizer for `model_name`: a registered one, else the model's own (hub id,
    embedded model, local dir or checkpoint), loaded once per process and name; callers share
    the returned object, so do not mutate it."""
    factory = _REGISTRY.get(model_name)
    return factory() if factory is not None else _load(model_name)


@functools.cache
def _load(model_name: str) -> Any:
    from bios_callbacks.models.loading import load_tokenizer

    return load_tokenizer(model_name)
