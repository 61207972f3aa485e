"""Chat formats: turn conversations into tokens and sampled tokens back into messages.

Example:
    >>> from bios_callbacks import renderers
    >>> renderers.renderer_names()  # doctest: +NORMALIZE_WHITESPACE
    ['chatml', 'hf_template', 'llama3', 'qwen3', 'qwen3_disable_thinking', 'qwen3_instruct',
     'role_colon']
    >>> r = renderers.get_renderer("chatml", tokenizer)  # doctest: +SKIP
    >>> prompt = r.build_generation_prompt([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bios_callbacks.model_info import get_recommended_renderer_name
from bios_callbacks.renderers.base import (
    PARSE_FAILURE_DETAIL_MAX_CHARS,
    UNTERMINATED_TOOL_BLOCK_ERROR,
    ContentPart,
    ImagePart,
    Message,
    ParseFailureKind,
    ParseTermination,
    RenderContext,
    RenderedMessage,
    Renderer,
    RendererError,
    Role,
    SupervisedExample,
    TextPart,
    ThinkingPart,
    ToolCall,
    ToolSpec,
    TrainOnWhat,
    UnparsedToolCall,
    classify_parse_failure,
    detect_unterminated_tool_block,
    ensure_list,
    ensure_text,
    format_content_as_string,
    get_text_content,
    parse_content_blocks,
)
from bios_callbacks.renderers.chatml import ChatMLRenderer
from bios_callbacks.renderers.hf_template import HFTemplateRenderer
from bios_callbacks.renderers.llama3 import Llama3Renderer
from bios_callbacks.renderers.qwen3 import (
    Qwen3DisableThinkingRenderer,
    Qwen3InstructRenderer,
    Qwen3Renderer,
)
from bios_callbacks.renderers.role_colon import RoleColonRenderer
from bios_callbacks.renderers.streaming import (
    MessageDelta,
    StreamingMessageHeader,
    StreamingTextDelta,
    StreamingThinkingDelta,
    Utf8TokenDecoder,
)

RendererFactory = Callable[[Any, Any], Renderer]
"""Builds a renderer from `(tokenizer, image_processor)`; image_processor may be None."""

_BUILTIN: dict[str, RendererFactory] = {
    cls.name: (lambda tokenizer, image_processor, cls=cls: cls(tokenizer))
    for cls in (
        ChatMLRenderer,
        HFTemplateRenderer,
        Llama3Renderer,
        Qwen3Renderer,
        Qwen3DisableThinkingRenderer,
        Qwen3InstructRenderer,
        RoleColonRenderer,
    )
}
_CUSTOM: dict[str, RendererFactory] = {}


def register_renderer(name: str, factory: RendererFactory) -> None:
    """Makes `get_renderer(name, tokenizer)` return `factory(tokenizer, image_processor)`.

    A registered name takes precedence over a built-in one.

    Example:
        >>> register_renderer("my_org/plain", lambda tok, ip: RoleColonRenderer(tok))
        >>> "my_org/plain" in renderer_names()
        True
        >>> unregister_renderer("my_org/plain")
        True
    """
    if not callable(factory):
        raise TypeError(
            f"register_renderer({name!r}, ...) needs a callable factory, got {factory!r}"
        )
    _CUSTOM[name] = factory


def unregister_renderer(name: str) -> bool:
    """Removes a registered renderer; False if `name` was not registered."""
    return _CUSTOM.pop(name, None) is not None


def get_registered_renderer_names() -> list[str]:
    """Names added with `register_renderer` (built-ins not included)."""
    return list(_CUSTOM)


def is_renderer_registered(name: str) -> bool:
    """Whether `name` was added with `register_renderer`."""
    return name in _CUSTOM


def renderer_names() -> list[str]:
    """Every name `get_renderer` accepts, sorted: built-ins and registered ones."""
    return sorted({*_BUILTIN, *_CUSTOM})


def get_renderer(
    name: str,
    tokenizer: Any,
    image_processor: Any = None,
    model_name: str | None = None,
) -> Renderer:
    """The chat format `name` bound to `tokenizer`.

    Built-in names: `chatml`, `hf_template`, `llama3`, `qwen3`, `qwen3_disable_thinking`,
    `qwen3_instruct` and `role_colon`; `renderer_names()` adds registered ones.
    `image_processor` is passed to registered factories (the built-in formats are text-only);
    `model_name` is recorded on the renderer (default: the tokenizer's name).

    Example:
        >>> get_renderer("chatml", tokenizer).get_stop_sequences()  # doctest: +SKIP
        [2]
    """
    factory = _CUSTOM.get(name) or _BUILTIN.get(name)
    if factory is None:
        raise ValueError(
            f"Unknown renderer {name!r}; valid names: {', '.join(renderer_names())}. "
            "bios_callbacks.model_info.get_recommended_renderer_name(model_name) picks one "
            "for a model; register_renderer(name, factory) adds your own."
        )
    renderer = factory(tokenizer, image_processor)
    renderer._renderer_name = name
    renderer._model_name = model_name or getattr(tokenizer, "name_or_path", None)
    renderer._has_image_processor = image_processor is not None
    return renderer


def default_renderer_name(model_name: str) -> str:
    """The recommended renderer for a model (`model_info.get_recommended_renderer_name`).

    Example:
        >>> default_renderer_name("meta-llama/Llama-3.2-1B-Instruct")
        'llama3'
    """
    return get_recommended_renderer_name(model_name)


__all__ = [
    "PARSE_FAILURE_DETAIL_MAX_CHARS",
    "UNTERMINATED_TOOL_BLOCK_ERROR",
    "ContentPart",
    "ImagePart",
    "Message",
    "MessageDelta",
    "ParseFailureKind",
    "ParseTermination",
    "RenderContext",
    "RenderedMessage",
    "Renderer",
    "RendererError",
    "RendererFactory",
    "Role",
    "StreamingMessageHeader",
    "StreamingTextDelta",
    "StreamingThinkingDelta",
    "SupervisedExample",
    "TextPart",
    "ThinkingPart",
    "ToolCall",
    "ToolSpec",
    "TrainOnWhat",
    "UnparsedToolCall",
    "Utf8TokenDecoder",
    "classify_parse_failure",
    "default_renderer_name",
    "detect_unterminated_tool_block",
    "ensure_list",
    "ensure_text",
    "format_content_as_string",
    "get_registered_renderer_names",
    "get_renderer",
    "get_text_content",
    "is_renderer_registered",
    "parse_content_blocks",
    "register_renderer",
    "renderer_names",
    "unregister_renderer",
]
