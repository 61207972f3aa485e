"""Chat formats built from marked turns: `header(role) + content + end marker [+ separator]`.

ChatML and Llama 3 differ only in their header, end marker, what follows a turn, whether
content is trimmed and the preamble used when the tokenizer has no template; this holds the rest.
"""

from __future__ import annotations

from typing import Any

from bios_callbacks.renderers.base import Message, Preamble, Renderer, Segment, probe_preamble


class TurnRenderer(Renderer):
    """A renderer whose turns are `header(role)`, content ending in `end`, then `after_turn`.

    Subclasses set `end` (a single token), `header`, and optionally `after_turn`,
    `strip_content` and `fallback_preamble`. A default system prompt or BOS is read from the
    tokenizer's own template (see `probe_preamble`).
    """

    end: str = ""
    after_turn: str = ""
    strip_content: bool = False
    fallback_preamble: Preamble = Preamble()

    @staticmethod
    def header(role: str) -> str:
        """The text opening a `role` turn."""
        raise NotImplementedError

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._end_id = self._single_token_id(self.end)
        self._preamble = probe_preamble(
            tokenizer, self.header("system"), self.header("user"), self.fallback_preamble
        )

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        has_system = messages[0]["role"] == "system"
        pre = self._preamble
        segments = [Segment(pre.with_system if has_system else pre.without_system)]
        for i, message in enumerate(messages):
            content = message["content"].strip() if self.strip_content else message["content"]
            if i == 0 and has_system:
                content = pre.system_prefix + content
            turn = i if message["role"] == "assistant" else None
            segments += [Segment(self.header(message["role"])), Segment(content + self.end, turn)]
            if self.after_turn:
                segments.append(Segment(self.after_turn))
        if add_generation_prompt:
            segments.append(Segment(self.header("assistant")))
        return segments

    def get_stop_sequences(self) -> list[int]:
        """`[id of the end-of-turn marker]`."""
        return [self._end_id]
