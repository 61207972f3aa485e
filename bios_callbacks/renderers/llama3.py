"""Llama 3 chat format: header tokens around each role, `<|eot_id|>` ending each turn."""

from __future__ import annotations

from bios_callbacks.renderers.base import Preamble
from bios_callbacks.renderers.turns import TurnRenderer

BOS = "<|begin_of_text|>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


class Llama3Renderer(TurnRenderer):
    """Llama 3 turns (content trimmed, as Meta's template does); BOS and any default system
    block (Llama 3.1's knowledge-date lines) come from the tokenizer's template. No tool calls
    (a message's are left out, with a warning): Llama 3's bare-JSON calls cannot be told apart
    from JSON answers.

    Example:
        >>> r = Llama3Renderer(tokenizer)  # doctest: +SKIP
        >>> tokenizer.decode(  # doctest: +SKIP
        ...     r.build_generation_prompt([{"role": "user", "content": "Hi"}]).tokens)
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>...'
    """

    name = "llama3"
    required_tokens = (BOS, HEADER_START, HEADER_END, EOT)
    end = EOT
    strip_content = True
    fallback_preamble = Preamble(BOS, BOS, "")

    @staticmethod
    def header_markup(role: str) -> str:
        return f"{HEADER_START}{role}{HEADER_END}"

    @staticmethod
    def header_text(role: str) -> str:
        return "\n\n"
