"""Which renderer suits which model, by name.

Example:
    >>> from bios_callbacks.model_info import get_recommended_renderer_name
    >>> get_recommended_renderer_name("Qwen/Qwen3-8B")
    'qwen3'
    >>> get_recommended_renderer_name("meta-llama/Llama-3.2-1B")
    'role_colon'
"""

from __future__ import annotations

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
