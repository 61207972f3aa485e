"""Parse a reply while it is being sampled: deltas to show as tokens arrive, then the Message.

`stream_response` turns sampled tokens into a `StreamingMessageHeader`, a run of
`StreamingTextDelta` / `StreamingThinkingDelta` (text inside `<think>...</think>` is thinking)
and, last, the same `Message` the renderer's `parse_response` gives for those tokens. Deltas
carry the text as sampled (the framing newlines of a Qwen3 think block included); a character
split across tokens, or text that may still become a tag, is held back until it is complete.

Example (the SmolLM2 tokenizer splits `<think>` and the emoji over several tokens):
    >>> from bios_callbacks.models import EMBEDDED_MODEL
    >>> from bios_callbacks.renderers import get_renderer
    >>> from bios_callbacks.tokenizer_utils import get_tokenizer
    >>> tok = get_tokenizer(EMBEDDED_MODEL)
    >>> renderer = get_renderer("chatml", tok)
    >>> reply = tok.encode("<think>hm</think>Hi 🎉<|im_end|>", add_special_tokens=False)
    >>> end = renderer.get_stop_sequences()[0]  # the id of <|im_end|>
    >>> for item in stream_response(
    ...     reply, tokenizer=tok, end_token=end, parse_final=renderer.parse_response
    ... ):
    ...     print(item)
    StreamingMessageHeader(role='assistant', name=None)
    StreamingThinkingDelta(thinking='hm', content_index=1)
    StreamingTextDelta(text='Hi', content_index=2)
    StreamingTextDelta(text=' 🎉', content_index=2)
    {'role': 'assistant', 'content': '<think>hm</think>Hi 🎉'}
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

# renderers/base.py re-exports these names, so this module does not import it: a parsed
# message is typed as the Mapping it is (base's `Message` TypedDict).

__all__ = [
    "MessageDelta",
    "StreamingMessageHeader",
    "StreamingParser",
    "StreamingTextDelta",
    "StreamingThinkingDelta",
    "Utf8TokenDecoder",
    "stream_response",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_INCOMPLETE = "\ufffd"  # what a decoder writes for bytes that are not (yet) a whole character


@dataclass
class StreamingMessageHeader:
    """First item of a stream: who is writing the message."""

    role: str
    name: str | None = None


@dataclass
class StreamingTextDelta:
    """New reply text (only what is new: concatenate the deltas of one `content_index`)."""

    text: str
    content_index: int = 0
    """Which block of the message this belongs to: 0 before the first `<think>`, then one
    more at every `<think>` or `</think>`, so it grows whenever text and thinking alternate."""


@dataclass
class StreamingThinkingDelta:
    """New reasoning text, from inside a `<think>...</think>` block."""

    thinking: str
    content_index: int = 0
    """As `StreamingTextDelta.content_index`."""


MessageDelta: TypeAlias = (
    StreamingMessageHeader | StreamingTextDelta | StreamingThinkingDelta | Mapping[str, Any]
)
"""One item of a stream: a header, then text/thinking deltas, then the complete `Message`."""

ParseFinal: TypeAlias = Callable[[list[int]], tuple[Mapping[str, Any], Any]]
"""A renderer's `parse_response`: tokens to `(Message, ParseTermination)`."""


class Utf8TokenDecoder:
    """Decodes tokens a few at a time without ever returning half a character.

    A byte-level tokenizer may spread one character (an emoji: 4 bytes) over several tokens,
    and decoding only some of them ends the text in U+FFFD. Such trailing tokens are kept
    until a later token completes the character.

    Example:
        >>> decoder = Utf8TokenDecoder(tokenizer)  # doctest: +SKIP
        >>> [decoder.decode([t]) for t in tokenizer.encode(" 🎉")]  # doctest: +SKIP
        [None, None, ' 🎉']
    """

    max_held: int = 8
    """How many trailing tokens may be held back for one incomplete character (a character
    is at most 4 bytes, and a token at least one)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._pending_tokens: list[int] = []

    def _text(self, tokens: list[int]) -> str | None:
        """`tokens` decoded, or None if they end inside a character (or cannot be decoded)."""
        try:
            text = str(self.tokenizer.decode(tokens))
        except Exception:  # some decoders raise on incomplete UTF-8 instead of writing U+FFFD
            return None
        return None if text.endswith(_INCOMPLETE) else text

    def decode(self, tokens: Sequence[int]) -> str | None:
        """Text of the held tokens plus `tokens`, up to the last complete character; None if
        nothing is complete yet. Tokens after that character are held for the next call."""
        self._pending_tokens.extend(int(t) for t in tokens)
        pending = self._pending_tokens
        # Longest prefix first; not a bisection, since decodability is not monotonic
        # (a prefix can end inside a character that a longer prefix completes).
        for held in range(min(len(pending) - 1, self.max_held) + 1):
            text = self._text(pending[: len(pending) - held])
            if text is not None:
                self._pending_tokens = pending[len(pending) - held :]
                return text
        return None

    def flush(self) -> str:
        """Text of whatever is still held (with U+FFFD for an unfinished character), for the
        end of a stream; afterwards nothing is held."""
        tokens, self._pending_tokens = self._pending_tokens, []
        if not tokens:
            return ""
        try:
            return str(self.tokenizer.decode(tokens))
        except Exception:
            return _INCOMPLETE

    def reset(self) -> None:
        """Drop the held tokens."""
        self._pending_tokens = []

    def has_pending(self) -> bool:
        """Whether tokens are held, waiting for the rest of a character."""
        return bool(self._pending_tokens)


def _longest_matching_suffix_prefix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag` (0 if none):
    how much of `text` may still turn out to be `tag` once more text arrives.

    Example:
        >>> _longest_matching_suffix_prefix("so <thi", "<think>")
        4
        >>> _longest_matching_suffix_prefix("so <thx", "<think>")
        0
    """
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class StreamingParser:
    """Turns tokens, fed one at a time, into `MessageDelta`s.

    Text outside `<think>...</think>` comes out as `StreamingTextDelta`, text inside as
    `StreamingThinkingDelta`; only a possible partial tag at the end (and an unfinished
    character) is held back. The first end token ends the reply: later tokens are ignored.
    `finish` then gives what was held and `parse_final(tokens up to the end token)`'s Message.

    Example:
        >>> parser = StreamingParser(tok, end_id, renderer.parse_response)  # doctest: +SKIP
        >>> for token in sampled:  # doctest: +SKIP
        ...     for delta in parser.feed(token):
        ...         show(delta)
        >>> *rest, message = parser.finish()  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer: Any,
        end_token: int,
        parse_final: ParseFinal,
        *,
        extra_end_tokens: Collection[int] = (),
    ) -> None:
        self.parse_final = parse_final
        self.end_tokens = frozenset({int(end_token), *(int(t) for t in extra_end_tokens)})
        self._decoder = Utf8TokenDecoder(tokenizer)
        self._tokens: list[int] = []
        self._unsent = ""  # decoded text not yet given out (it may be the start of a tag)
        self._in_thinking = False
        self._content_index = 0
        self._started = False
        self.done = False  # an end token was fed (or `finish` called): nothing more is read
        self._finished = False

    def _header(self) -> Iterator[MessageDelta]:
        if not self._started:
            self._started = True
            yield StreamingMessageHeader(role="assistant")

    def _delta(self, text: str) -> Iterator[MessageDelta]:
        if not text:
            return
        if self._in_thinking:
            yield StreamingThinkingDelta(thinking=text, content_index=self._content_index)
        else:
            yield StreamingTextDelta(text=text, content_index=self._content_index)

    def _drain(self, final: bool) -> Iterator[MessageDelta]:
        """Give out the unsent text, switching mode at each complete tag; unless `final`,
        keep an end that may be the start of the next tag."""
        while True:
            tag = THINK_CLOSE if self._in_thinking else THINK_OPEN
            before, found, after = self._unsent.partition(tag)
            if not found:
                break
            yield from self._delta(before)
            self._unsent = after
            self._in_thinking = not self._in_thinking
            self._content_index += 1
        keep = 0 if final else _longest_matching_suffix_prefix(self._unsent, tag)
        yield from self._delta(self._unsent[: len(self._unsent) - keep])
        self._unsent = self._unsent[len(self._unsent) - keep :]

    def feed(self, token: int) -> Iterator[MessageDelta]:
        """Read one sampled token; yields the header (first time) and any text now safe."""
        if self.done:
            return
        token = int(token)
        self._tokens.append(token)
        yield from self._header()
        if token in self.end_tokens:
            self.done = True
            return
        text = self._decoder.decode([token])
        if text:
            self._unsent += text
            yield from self._drain(final=False)

    def finish(self) -> Iterator[MessageDelta]:
        """End the stream: yields the header if none was given, all held text, then the
        Message `parse_final` makes of the tokens read (up to and including the end token).
        Only the first call yields anything."""
        if self._finished:
            return
        self._finished = self.done = True
        yield from self._header()
        self._unsent += self._decoder.flush()
        yield from self._drain(final=True)
        message, _termination = self.parse_final(list(self._tokens))
        yield message


def stream_response(
    tokens: Iterable[int],
    *,
    tokenizer: Any,
    end_token: int,
    parse_final: ParseFinal,
    extra_end_tokens: Collection[int] = (),
) -> Iterator[MessageDelta]:
    """Deltas of a sampled reply as its tokens come in, then its complete `Message`.

    `tokens` may be a list or an iterator still being filled by a sampler: each delta is
    yielded as soon as the tokens read so far allow. Reading stops at the first `end_token`
    (or one of `extra_end_tokens`, e.g. an EOS that also ends a reply); the final Message is
    `parse_final` of the tokens up to it, typically a renderer's `parse_response`.
    See the module docstring for an example.
    """
    parser = StreamingParser(tokenizer, end_token, parse_final, extra_end_tokens=extra_end_tokens)
    for token in tokens:
        yield from parser.feed(token)
        if parser.done:
            break
    yield from parser.finish()
