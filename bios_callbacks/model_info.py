"""Which renderer suits which model, and what a model's name says about it.

Example:
    >>> from bios_callbacks.model_info import get_recommended_renderer_name
    >>> get_recommended_renderer_name("Qwen/Qwen3-8B")
    'qwen3'
    >>> get_recommended_renderer_name("meta-llama/Llama-3.2-1B")
    'role_colon'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Checked in order on the lower-cased name: every fragment must occur; first match wins.
_RULES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("qwen3.",), ("hf_template",)),  # Qwen3.5 and later: formats this package lacks
    (("qwen3", "instruct-2507"), ("qwen3_instruct",)),
    (("qwen3", "base"), ("role_colon",)),
    (("qwen3",), ("qwen3", "qwen3_disable_thinking")),
    (("qwen2",), ("chatml",)),
    (("smollm",), ("chatml",)),
    (("llama-3", "instruct"), ("llama3",)),
    (("llama3", "instruct"), ("llama3",)),
    (("llama-3",), ("role_colon",)),
    (("llama3",), ("role_colon",)),
)


def get_recommended_renderer_names(model_name: str) -> list[str]:
    """Renderers made for `model_name`, best first; `["hf_template"]` (the model's own chat
    template) for models this package has no dedicated format for.

    Example:
        >>> get_recommended_renderer_names("Qwen/Qwen3-8B")
        ['qwen3', 'qwen3_disable_thinking']
    """
    lowered = model_name.split(":", 1)[0].lower()
    for fragments, names in _RULES:
        if all(f in lowered for f in fragments):
            return list(names)
    return ["hf_template"]


def get_recommended_renderer_name(model_name: str) -> str:
    """The best renderer for `model_name`: chatml for SmolLM2 and Qwen2/2.5, qwen3 for Qwen3
    (qwen3_instruct for its 2507 Instruct models), llama3 for Llama 3 Instruct, role_colon for
    base models, else hf_template.

    Example:
        >>> get_recommended_renderer_name("HuggingFaceTB/SmolLM2-135M-Instruct")
        'chatml'
    """
    return get_recommended_renderer_names(model_name)[0]


@dataclass(frozen=True)
class ModelAttributes:
    """What a model's name tells: who made it, its family version and size, whether it is
    tuned for chat, the renderers made for it (best first) and whether it reads images or audio.
    """

    organization: str
    version_str: str
    size_str: str
    is_chat: bool
    recommended_renderers: tuple[str, ...]
    is_vl: bool = False
    is_audio_in: bool = False


_VERSION = re.compile(r"(?:llama-?|qwen|smollm|mistral-?|gemma-?|phi-?)(\d+(?:\.\d+)?)")
_SIZE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?[BbMm](?:-A\d+(?:\.\d+)?[Bb])?)(?![\w.])")


def get_model_attributes(model_name: str) -> ModelAttributes:
    """The `ModelAttributes` read off a hub id (`org/name`, an optional `:suffix` ignored).

    A Qwen3 hybrid model (no "Base" in its name) counts as a chat model, as do names with
    "Instruct", "Chat" or "-it"; "-VL" or "Vision" marks image input, "Audio" or "Omni" audio.

    Example:
        >>> attributes = get_model_attributes("Qwen/Qwen3-30B-A3B-Instruct-2507")
        >>> attributes.version_str, attributes.size_str, attributes.is_chat
        ('3', '30B-A3B', True)
        >>> get_model_attributes("meta-llama/Llama-3.2-1B").recommended_renderers
        ('role_colon',)
    """
    name = model_name.split(":", 1)[0]
    if "/" not in name:
        raise ValueError(
            f"model_name={model_name!r}: expected a hub id 'organization/model', e.g. "
            "'Qwen/Qwen3-8B'."
        )
    organization, model = name.split("/", 1)
    lowered = model.lower()
    version = _VERSION.search(lowered)
    size = _SIZE.search(model.replace("_", "-"))
    is_qwen3_hybrid = lowered.startswith("qwen3-") and "base" not in lowered
    chat_marks = ("instruct", "chat", "-it")
    return ModelAttributes(
        organization=organization,
        version_str=version.group(1) if version else "",
        size_str=size.group(1).upper() if size else "",
        is_chat=is_qwen3_hybrid or any(mark in lowered for mark in chat_marks),
        recommended_renderers=tuple(get_recommended_renderer_names(name)),
        is_vl="-vl" in lowered or "vision" in lowered,
        is_audio_in="audio" in lowered or "omni" in lowered,
    )
