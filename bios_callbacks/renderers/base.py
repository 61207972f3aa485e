"""What every chat format shares: message checks, tokenization with per-token weights, parsing.

A renderer turns a conversation into *segments* of text. A segment either belongs to an
assistant turn (its content and end-of-turn marker, trainable) or not. The whole text is
tokenized in one call, so boundaries tokenize exactly as the model's chat template does, and
each token takes its weight from the segments its characters come from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bios_callbacks.types import ModelInput

ROLES = ("system", "user", "assistant", "tool")
TRAIN_ON = ("all_assistant", "last_assistant")

Termination = Literal["stop", "eos", "length"]
Message = dict[str, str]


@dataclass(frozen=True)
class SupervisedExample:
    """Tokens of a whole conversation and a loss weight per token.

    Weight 1.0 marks assistant content and its end-of-turn marker; 0.0 marks everything else.
    """

    tokens: list[int]
    weights: list[float]


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `turn` is the index of the assistant message it trains, if any."""

    text: str
    turn: int | None = None


class Renderer(ABC):
    """A chat format bound to a tokenizer.

    Example:
        >>> renderer = get_renderer(name="chatml", tokenizer=tokenizer)  # doctest: +SKIP
        >>> prompt = renderer.build_generation_prompt([{"role": "user", "content": "Hi"}])
        >>> message, termination = renderer.parse_response(sampled_tokens)
    """

    name: str = ""
    required_tokens: tuple[str, ...] = ()

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer is None:
            raise ValueError(
                f"Renderer {self.name!r} needs a tokenizer, got None; pass "
                "tokenizer=bios_callbacks.tokenizer_utils.get_tokenizer(model_name)."
            )
        self.tokenizer = tokenizer
        self._check_required_tokens()

    # -- what a format defines ---------------------------------------------------------------

    @abstractmethod
    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        """The conversation as text segments, optionally ending with the assistant header."""

    @abstractmethod
    def get_stop_sequences(self) -> list[int] | list[str]:
        """What ends an assistant turn: token ids if the marker is one token, else strings."""

    def _clean_content(self, text: str) -> str:
        """Turns decoded response text (end marker removed) into message content."""
        return text

    # -- shared behaviour ----------------------------------------------------------------

    def build_generation_prompt(self, messages: Sequence[Mapping[str, Any]]) -> ModelInput:
        """Tokens of `messages` followed by the header that asks the assistant to reply.

        Example:
            >>> msgs = [{"role": "user", "content": "Hi"}]
            >>> renderer.build_generation_prompt(msgs)  # doctest: +SKIP
            ModelInput(tokens=(1, 9690, ...))
        """
        checked = check_messages(messages)
        text = "".join(s.text for s in self._segments(checked, add_generation_prompt=True))
        return ModelInput.from_ints(self._encode(text))

    def build_supervised_example(
        self,
        messages: Sequence[Mapping[str, Any]],
        train_on: str = "all_assistant",
    ) -> SupervisedExample:
        """Tokens of the whole conversation with weight 1.0 on the assistant turns to learn.

        `train_on` is "all_assistant" (default) or "last_assistant". A token that straddles a
        trainable and an untrainable segment counts as trainable.

        Example:
            >>> ex = renderer.build_supervised_example(  # doctest: +SKIP
            ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
            ... )
            >>> len(ex.tokens) == len(ex.weights)
            True
        """
        if train_on not in TRAIN_ON:
            raise ValueError(f"train_on={train_on!r}: expected one of {', '.join(TRAIN_ON)}.")
        checked = check_messages(messages)
        assistant_turns = [i for i, m in enumerate(checked) if m["role"] == "assistant"]
        if not assistant_turns:
            raise ValueError(
                "build_supervised_example needs at least one assistant message to train on; "
                f"got roles {[m['role'] for m in checked]}."
            )
        trained = set(assistant_turns if train_on == "all_assistant" else assistant_turns[-1:])
        segments = self._segments(checked, add_generation_prompt=False)
        spans, text, pos = [], "", 0
        for seg in segments:
            if seg.turn in trained and seg.text:
                spans.append((pos, pos + len(seg.text)))
            text += seg.text
            pos += len(seg.text)
        tokens, offsets = self._encode_with_offsets(text)
        weights = [
            1.0 if any(a < end and start < b for start, end in spans) else 0.0 for a, b in offsets
        ]
        return SupervisedExample(tokens=tokens, weights=weights)

    def parse_response(
        self, tokens: Sequence[int], extra_stop: Sequence[str] = ()
    ) -> tuple[Message, Termination]:
        """The assistant message in sampled `tokens`, and why the sample ended.

        Termination is "stop" (a stop sequence ended it), "eos" (the tokenizer's end-of-sequence
        token did) or "length" (neither: it was cut off). Content excludes the end marker, and
        ends before the first of the caller's `extra_stop` strings too.

        Example:
            >>> renderer.parse_response(tokenizer.encode("Hello<|im_end|>"))  # doctest: +SKIP
            ({'role': 'assistant', 'content': 'Hello'}, 'stop')
        """
        ids = [int(t) for t in tokens]
        stops = self.get_stop_sequences()
        stop_ids = {s for s in stops if isinstance(s, int)}
        stop_strings = [s for s in (*stops, *extra_stop) if isinstance(s, str) and s]
        eos_id = self.tokenizer.eos_token_id
        cut, termination = len(ids), "length"
        for i, token in enumerate(ids):
            if token in stop_ids:
                cut, termination = i, "stop"
                break
            if token == eos_id:
                cut, termination = i, "eos"
                break
        text = self.tokenizer.decode(ids[:cut], skip_special_tokens=False)
        hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
        if hits:
            text, termination = text[: min(hits)], "stop"
        return {"role": "assistant", "content": self._clean_content(text)}, termination

    # -- helpers ---------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"Renderer {self.name!r} needs a fast (Rust-backed) tokenizer to weight tokens; "
                f"got {type(self.tokenizer).__name__}. Load it with AutoTokenizer (use_fast=True)."
            )
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _single_token_id(self, token: str) -> int:
        """Id of a special token that must exist in the vocabulary."""
        ids = self._encode(token)
        if len(ids) != 1:
            raise ValueError(self._missing_tokens_message([token]))
        return ids[0]

    def _check_required_tokens(self) -> None:
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in self.required_tokens if t not in vocab]
        if missing:
            raise ValueError(self._missing_tokens_message(missing))

    def _missing_tokens_message(self, missing: list[str]) -> str:
        name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
        return (
            f"Renderer {self.name!r} needs the special token(s) {', '.join(missing)}, but "
            f"tokenizer {name!r} lacks them. Use the renderer that matches the model "
            "(bios_callbacks.renderers.default_renderer_name(model_name)) or 'hf_template'."
        )


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Validates a conversation and returns it as plain {"role", "content"} dicts."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
            f"{type(messages).__name__}; e.g. [{{'role': 'user', 'content': 'Hi'}}]."
        )
    if not messages:
        raise ValueError("messages is empty; give at least one, e.g. [{'role': 'user', ...}].")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] is a {type(message).__name__}, expected a dict.")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{i}]['role']={role!r}: expected one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise TypeError(
                f"messages[{i}]['content'] is {type(content).__name__}, expected a string."
            )
        checked.append({"role": role, "content": content})
    return checked


def render_template(tokenizer: Any, messages: list[Message], add_generation_prompt: bool) -> str:
    """The tokenizer's own chat template applied to `messages`, as text."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


_PROBE = "BIOS_RENDERER_PROBE"


@dataclass(frozen=True)
class Preamble:
    """Text a chat template adds around the system turn.

    `without_system` precedes the first message when there is no system message (a default
    system prompt, a BOS token); `with_system` precedes the system header when there is one;
    `system_prefix` sits between the system header and the system content.
    """

    without_system: str = ""
    with_system: str = ""
    system_prefix: str = ""


def probe_preamble(
    tokenizer: Any, system_header: str, user_header: str, default: Preamble
) -> Preamble:
    """Reads the preamble off the tokenizer's chat template; `default` if it has none that fits.

    Example: SmolLM2's template gives `without_system="<|im_start|>system\\nYou are a helpful
    AI assistant named SmolLM, ...<|im_end|>\\n"`.
    """
    if not getattr(tokenizer, "chat_template", None):
        return default
    user = {"role": "user", "content": _PROBE}
    try:
        user_only = render_template(tokenizer, [user], add_generation_prompt=False)
        system = {"role": "system", "content": _PROBE}
        with_system = render_template(tokenizer, [system, user], add_generation_prompt=False)
    except Exception:  # a template of another format may reject the probe; use the default
        return default
    user_at = user_only.find(user_header + _PROBE)
    system_at = with_system.find(system_header)
    content_at = with_system.find(_PROBE)
    if user_at < 0 or system_at < 0 or content_at < system_at + len(system_header):
        return default
    return Preamble(
        without_system=user_only[:user_at],
        with_system=with_system[:system_at],
        system_prefix=with_system[system_at + len(system_header) : content_at],
    )
