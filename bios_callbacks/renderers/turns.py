"""Chat formats built from marked turns: `markers + role text`, content, one end-marker token.

ChatML and Llama 3 differ only in their markers, what separates turns, whether content is
trimmed and the preamble used when the tokenizer has no template; this holds the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from bios_callbacks.renderers.base import (
    Message,
    MessageDelta,
    ParseTermination,
    Preamble,
    RenderContext,
    RenderedMessage,
    Renderer,
    probe_preamble,
)
from bios_callbacks.renderers.streaming import stream_response
from bios_callbacks.types import ModelInput


class TurnRenderer(Renderer):
    """A renderer whose turns are `header(role)`, content, then the single token `end`.

    Subclasses set `end`, `header_markup` and `header_text`, and optionally `separator`
    (written before every turn but the first), `strip_content` and `fallback_preamble`. A
    default system prompt or BOS is read from the tokenizer's own template (`probe_preamble`).

    A message the model never writes is tokenized together with the text ending its header,
    as the template does; an assistant message is tokenized after its header, as sampling
    produces it.
    """

    end: str = ""
    supports_streaming = True
    separator: str = ""
    strip_content: bool = False
    fallback_preamble: Preamble = Preamble()

    @staticmethod
    def header_markup(role: str) -> str:
        """The header up to the text that may merge with content, markers included."""
        raise NotImplementedError

    @staticmethod
    def header_text(role: str) -> str:
        """The plain text ending the header (e.g. `"\\n"`), tokenized with the content."""
        raise NotImplementedError

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._end_id = self.special_id(self.end)
        self._preamble = probe_preamble(
            tokenizer,
            self.header_markup("system") + self.header_text("system"),
            self.header_markup("user") + self.header_text("user"),
            self.fallback_preamble,
        )

    def _prefix_tokens(self, messages: Sequence[Message]) -> list[int]:
        pre = self._preamble
        has_system = bool(messages) and messages[0]["role"] == "system"
        return self.encode_markup(pre.with_system if has_system else pre.without_system)

    def _message_text(self, message: Message) -> str:
        return self._content_text(message)

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """`[separator] header`, then content and the end marker as the output."""
        role = message["role"]
        text = self._message_text(message)
        if self.strip_content:
            text = text.strip()
        if ctx.idx == 0 and role == "system":
            text = self._preamble.system_prefix + text
        markup = self.encode_markup((self.separator if ctx.idx else "") + self.header_markup(role))
        if role == "assistant":
            head, content = self.encode_text(self.header_text(role)), self.encode_text(text)
        else:
            head, content = self.encode_joined(self.header_text(role), text)
        return RenderedMessage(
            header=ModelInput.from_ints(markup + head),
            output=[ModelInput.from_ints([*content, self._end_id])],
        )

    def get_stop_sequences(self) -> list[int]:
        """`[id of the end-of-turn marker]`."""
        return [self._end_id]

    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """The reply before the end marker (or EOS); MALFORMED if neither came.

        Two end markers are an error: the sampler should have stopped at the first.

        Example:
            >>> renderer.parse_response(tokenizer.encode("Hello<|im_end|>"))  # doctest: +SKIP
            ({'role': 'assistant', 'content': 'Hello'}, <ParseTermination.STOP_SEQUENCE: 'stop'>)
        """
        message, termination = self._parse_until_stop_token(response, self._end_id)
        if self.strip_content:
            message["content"] = message["content"].strip()
        return message, termination

    def parse_response_streaming(self, response: Iterable[int]) -> Iterator[MessageDelta]:
        """`parse_response` for a reply still being sampled: a `StreamingMessageHeader`, text
        and thinking deltas as soon as they are safe to show, then the parsed `Message`.

        `response` may be a list or an iterator a sampler is still filling; reading stops at
        the end marker (or EOS). A reply cut off before it still ends in the Message its
        text parses to. See `bios_callbacks.renderers.streaming`.

        Example:
            >>> for delta in renderer.parse_response_streaming(tokens):  # doctest: +SKIP
            ...     print(delta)
        """
        eos = self.tokenizer.eos_token_id
        return stream_response(
            response,
            tokenizer=self.tokenizer,
            end_token=self._end_id,
            parse_final=self._parse_streamed,
            extra_end_tokens=() if eos is None else (eos,),
        )

    def _parse_streamed(self, tokens: list[int]) -> tuple[Message, ParseTermination]:
        """`parse_response`, parsing a reply cut off before its end marker as if the marker
        had come (thinking and tool calls split out), still reported MALFORMED."""
        if tokens and tokens[-1] in (self._end_id, self.tokenizer.eos_token_id):
            return self.parse_response(tokens)
        message, _ = self.parse_response([*tokens, self._end_id])
        return message, ParseTermination.MALFORMED
