"""Chat formats: turn conversations into tokens and sampled tokens back into messages.

Example:
    >>> from bios_callbacks import renderers
    >>> renderers.renderer_names()
    ['chatml', 'hf_template', 'llama3', 'role_colon']
    >>> renderers.default_renderer_name("HuggingFaceTB/SmolLM2-135M-Instruct")
    'chatml'
    >>> r = renderers.get_renderer(name="chatml", tokenizer=tokenizer)  # doctest: +SKIP
    >>> prompt = r.build_generation_prompt([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from bios_callbacks.renderers.base import Message, Renderer, SupervisedExample, Termination
from bios_callbacks.renderers.chatml import ChatMLRenderer
from bios_callbacks.renderers.hf_template import HFTemplateRenderer
from bios_callbacks.renderers.llama3 import Llama3Renderer
from bios_callbacks.renderers.role_colon import RoleColonRenderer

__all__ = [
    "Message",
    "Renderer",
    "SupervisedExample",
    "Termination",
    "default_renderer_name",
    "get_renderer",
    "renderer_names",
]

_RENDERERS: dict[str, type[Renderer]] = {
    cls.name: cls for cls in (ChatMLRenderer, HFTemplateRenderer, Llama3Renderer, RoleColonRenderer)
}

# Lower-cased fragments of model names, checked in order, and the renderer they use.
_DEFAULTS = (
    ("smollm2", "chatml"),
    ("qwen2", "chatml"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
)


def renderer_names() -> list[str]:
    """Names `get_renderer` accepts, sorted."""
    return sorted(_RENDERERS)


def get_renderer(name: str, tokenizer: Any) -> Renderer:
    """The chat format `name` bound to `tokenizer`.

    Example:
        >>> get_renderer(name="chatml", tokenizer=tokenizer).get_stop_sequences()  # doctest: +SKIP
        [2]
    """
    if name not in _RENDERERS:
        raise ValueError(
            f"Unknown renderer {name!r}; valid names: {', '.join(renderer_names())}. "
            "default_renderer_name(model_name) picks one for a model."
        )
    return _RENDERERS[name](tokenizer)


def default_renderer_name(model_name: str) -> str:
    """The renderer for a model: chatml for SmolLM2 and Qwen2, llama3 for Llama 3, else
    hf_template (the model's own chat template).

    Example:
        >>> default_renderer_name("meta-llama/Llama-3.2-1B-Instruct")
        'llama3'
    """
    lowered = model_name.lower()
    for fragment, name in _DEFAULTS:
        if fragment in lowered:
            return name
    return "hf_template"
