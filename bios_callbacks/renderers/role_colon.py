"""Plain-text turns, `User: ...\\n\\nAssistant: ...`, for base models without chat tokens."""

from __future__ import annotations

from collections.abc import Sequence

from bios_callbacks.renderers.base import (
    Message,
    ParseTermination,
    RenderContext,
    RenderedMessage,
    Renderer,
)
from bios_callbacks.types import ModelInput

STOP = "\n\nUser:"
_BEFORE, _AFTER = " ", "\n\n"  # around content; parse_response undoes exactly these


class RoleColonRenderer(Renderer):
    """Each message is `Role:` then ` content\\n\\n`; a reply ends at `\\n\\nUser:`.

    The `User:` that completes that stop string is trained after the last assistant message of
    a supervised example. Content keeps its own whitespace both ways. The tokenizer's BOS, if
    it adds one, starts every sequence.

    Example:
        >>> r = RoleColonRenderer(tokenizer)  # doctest: +SKIP
        >>> tokenizer.decode(  # doctest: +SKIP
        ...     r.build_generation_prompt([{"role": "user", "content": "Hi"}]).tokens)
        'User: Hi\\n\\nAssistant:'
    """

    name = "role_colon"

    def _prefix_tokens(self, messages: Sequence[Message]) -> list[int]:
        return list(self.tokenizer.encode("", add_special_tokens=True))

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """`Role:` as the header, ` content\\n\\n` as the output."""
        role = message["role"]
        return RenderedMessage(
            header=ModelInput.from_ints(self.encode_text(f"{role.capitalize()}:")),
            output=[
                ModelInput.from_ints(
                    self.encode_text(_BEFORE + self._content_text(message) + _AFTER)
                )
            ],
            stop_overlap=ModelInput.from_ints(self.encode_text("User:"))
            if role == "assistant"
            else None,
        )

    def get_stop_sequences(self) -> list[str]:
        """`["\\n\\nUser:"]`: the reply ends where the next user turn would begin."""
        return [STOP]

    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """The reply before `\\n\\nUser:` (STOP_SEQUENCE), or before a final EOS (EOS).

        MALFORMED when neither ended it, when EOS follows `\\n\\nUser:`, or when the model
        wrote the user's turn too (`\\n\\nUser:` twice). The reply's own whitespace is kept.

        Example:
            >>> r.parse_response(tokenizer.encode(" Paris\\n\\nUser:"))  # doctest: +SKIP
            ({'role': 'assistant', 'content': 'Paris'}, <ParseTermination.STOP_SEQUENCE: 'stop'>)
        """
        ids = [int(t) for t in response]
        eos = self.tokenizer.eos_token_id
        ended_with_eos = bool(ids) and eos is not None and ids[-1] == eos
        text = self.decode(ids[:-1] if ended_with_eos else ids)
        pieces = text.split(STOP)
        if len(pieces) == 2 and not ended_with_eos:
            termination = ParseTermination.STOP_SEQUENCE
        elif len(pieces) == 1 and ended_with_eos:
            termination = ParseTermination.EOS
        else:
            termination = ParseTermination.MALFORMED
        content = pieces[0].removeprefix(_BEFORE)
        if len(pieces) == 1:  # else the stop string took the newlines that follow content
            content = content.removesuffix(_AFTER)
        return Message(role="assistant", content=content), termination
