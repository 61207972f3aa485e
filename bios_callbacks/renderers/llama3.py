"""Llama 3 chat format: header tokens around each role, `<|eot_id|>` ending each turn."""

from __future__ import annotations

from typing import Any

from bios_callbacks.renderers.base import Message, Preamble, Renderer, Segment, probe_preamble

BOS = "<|begin_of_text|>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


def _header(role: str) -> str:
    return f"{HEADER_START}{role}{HEADER_END}\n\n"


class Llama3Renderer(Renderer):
    """Llama 3 turns (content trimmed, as Meta's template does); BOS and any default system
    block (Llama 3.1's knowledge-date lines) come from the tokenizer's template.

    Example:
        >>> r = Llama3Renderer(tokenizer)  # doctest: +SKIP
        >>> tokenizer.decode(r.build_generation_prompt([{"role": "user", "content": "Hi"}]).tokens)
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>...'
    """

    name = "llama3"
    required_tokens = (BOS, HEADER_START, HEADER_END, EOT)

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._end_id = self._single_token_id(EOT)
        self._preamble = probe_preamble(
            tokenizer, _header("system"), _header("user"), Preamble(BOS, BOS, "")
        )

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        has_system = messages[0]["role"] == "system"
        pre = self._preamble
        segments = [Segment(pre.with_system if has_system else pre.without_system)]
        for i, message in enumerate(messages):
            content = message["content"].strip()
            if i == 0 and has_system:
                content = pre.system_prefix + content
            turn = i if message["role"] == "assistant" else None
            segments += [Segment(_header(message["role"])), Segment(content + EOT, turn)]
        if add_generation_prompt:
            segments.append(Segment(_header("assistant")))
        return segments

    def get_stop_sequences(self) -> list[int]:
        """`[id of <|eot_id|>]`."""
        return [self._end_id]
