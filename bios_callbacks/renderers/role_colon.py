"""Plain-text turns, `User: ...\\n\\nAssistant: ...`, for base models without chat tokens."""

from __future__ import annotations

from bios_callbacks.renderers.base import Message, Renderer, Segment

STOP = "\n\nUser:"


class RoleColonRenderer(Renderer):
    """Each message is `Role: content` followed by a blank line; a reply ends at `\\n\\nUser:`.

    That end marker is what a supervised example trains: the `User:` after an assistant turn
    carries that turn's weight, and a conversation ending on an assistant turn ends in `User:`.

    Example:
        >>> r = RoleColonRenderer(tokenizer)  # doctest: +SKIP
        >>> tokenizer.decode(r.build_generation_prompt([{"role": "user", "content": "Hi"}]).tokens)
        'User: Hi\\n\\nAssistant:'
    """

    name = "role_colon"

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        segments = []
        for i, message in enumerate(messages):
            turn = i if message["role"] == "assistant" else None
            after_reply = i > 0 and messages[i - 1]["role"] == "assistant"
            header_turn = i - 1 if after_reply and message["role"] == "user" else None
            segments += [
                Segment(f"{message['role'].capitalize()}:", header_turn),
                Segment(f" {message['content']}\n\n", turn),
            ]
        if messages[-1]["role"] == "assistant" and not add_generation_prompt:
            segments.append(Segment("User:", len(messages) - 1))
        if add_generation_prompt:
            segments.append(Segment("Assistant:"))
        return segments

    def get_stop_sequences(self) -> list[str]:
        """`["\\n\\nUser:"]`: the reply ends where the next user turn would begin."""
        return [STOP]

    def _clean_content(self, text: str) -> str:
        return text.strip()
