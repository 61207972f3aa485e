"""ChatML: `<|im_start|>role\\ncontent<|im_end|>`, turns joined by `\\n` (SmolLM2, Qwen2/2.5)."""

from __future__ import annotations

from collections.abc import Sequence

from bios_callbacks.renderers.base import (
    Message,
    ParseTermination,
    split_tool_calls,
    tool_calls_text,
)
from bios_callbacks.renderers.turns import TurnRenderer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ChatMLRenderer(TurnRenderer):
    """ChatML turns; a default system prompt is taken from the tokenizer's template, if any.

    Tool calls are written and parsed Hermes-style (`<tool_call>\\n{json}\\n</tool_call>`
    after the text), as Qwen2.5 does; thinking parts are inlined as `<think>...</think>`.

    Example:
        >>> r = ChatMLRenderer(tokenizer)  # doctest: +SKIP
        >>> prompt = r.build_generation_prompt(  # doctest: +SKIP
        ...     [{"role": "user", "content": "Hi"}])
        >>> tokenizer.decode(prompt.tokens)  # doctest: +SKIP
        '<|im_start|>system\\nYou are ... SmolLM, ...<|im_start|>assistant\\n'
    """

    name = "chatml"
    required_tokens = (IM_START, IM_END)
    supports_tool_calls = True
    end = IM_END
    separator = "\n"

    @staticmethod
    def header_markup(role: str) -> str:
        return IM_START

    @staticmethod
    def header_text(role: str) -> str:
        return f"{role}\n"

    def _message_text(self, message: Message) -> str:
        text = self._content_text(message)
        if message.get("tool_calls"):
            text += ("\n" if text else "") + tool_calls_text(message["tool_calls"])
        return text

    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """As `TurnRenderer.parse_response`; `<tool_call>` blocks become `tool_calls`."""
        message, termination = super().parse_response(response)
        return split_tool_calls(message), termination
