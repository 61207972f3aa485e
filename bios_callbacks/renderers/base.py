"""What every chat format shares: message types, token assembly with loss weights, parsing.

A renderer turns each message into token pieces: a *header* (role markers, never generated)
and an *output* (what the model writes for that turn, end-of-turn marker included). A prompt
is the pieces of the history followed by the generation header; a supervised example is the
pieces of the whole conversation. Both are built from the same pieces, so every supervised
example starts with exactly the tokens `build_generation_prompt` gives for its history.

Message content is always tokenized as text with special tokens split: a user who writes
`<|im_end|>` gets the characters, never the marker. Only a renderer's own markers are special.
"""

from __future__ import annotations

import json
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NotRequired, TypedDict

from bios_callbacks.exceptions import RendererError
from bios_callbacks.renderers.streaming import (
    MessageDelta,
    StreamingMessageHeader,
    StreamingTextDelta,
    StreamingThinkingDelta,
    Utf8TokenDecoder,
    _longest_matching_suffix_prefix,
)
from bios_callbacks.types import ModelInput

if TYPE_CHECKING:
    import torch

ROLES = ("system", "user", "assistant", "tool")


# -- message types -----------------------------------------------------------------------------


class TextPart(TypedDict):
    """Visible text in a message's content list."""

    type: Literal["text"]
    text: str


class ThinkingPart(TypedDict):
    """The model's reasoning in a message's content list."""

    type: Literal["thinking"]
    thinking: str


class ImagePart(TypedDict):
    """An image in a message's content list: a URL, a data URI or a PIL image. Our renderers
    are text-only and refuse it; it exists so content can be logged and ported as is."""

    type: Literal["image"]
    image: Any


ContentPart = TextPart | ThinkingPart | ImagePart
Content = str | list[ContentPart]
Role = str
"""A message's author: "system", "user", "assistant", "tool" or a format's own."""


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant makes: `function.name` and `function.arguments` (a JSON string).

    Example:
        >>> call = ToolCall(function=ToolCall.FunctionBody(name="add", arguments='{"a": 1}'))
        >>> call.function.name
        'add'
    """

    @dataclass(frozen=True)
    class FunctionBody:
        """The function a tool call names and its JSON-encoded arguments."""

        name: str
        arguments: str

    function: FunctionBody
    id: str | None = None
    type: Literal["function"] = "function"


@dataclass(frozen=True)
class UnparsedToolCall:
    """Text that looked like a tool call but could not be parsed, and why."""

    raw_text: str
    error: str


class Message(TypedDict):
    """One turn: `role` and `content` (a string or text/thinking parts), plus optional fields.

    `tool_calls` are calls an assistant makes; `trainable` marks messages to train on with
    `TrainOnWhat.CUSTOMIZED`; `tool_call_id` and `name` describe a tool's result.
    """

    role: str
    content: Content
    tool_calls: NotRequired[list[ToolCall]]
    unparsed_tool_calls: NotRequired[list[UnparsedToolCall]]
    trainable: NotRequired[bool]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


class ToolSpec(TypedDict):
    """A tool the model may call: name, description and a JSON schema of its parameters."""

    name: str
    description: str
    parameters: dict


class ParseTermination(StrEnum):
    """How a sampled response ended.

    `STOP_SEQUENCE` (equal to the string "stop"): the format's end-of-turn marker, or a stop
    string the caller passed. `EOS` ("eos"): the tokenizer's end-of-sequence token.
    `MALFORMED` ("malformed"): neither, e.g. cut off by `max_tokens` (this was "length"), or a
    framing the format forbids. Grade what `is_clean`; reward format on `is_stop_sequence`.

    Example:
        >>> ParseTermination.STOP_SEQUENCE == "stop", ParseTermination("length").is_clean
        (True, False)
    """

    STOP_SEQUENCE = "stop"
    EOS = "eos"
    MALFORMED = "malformed"

    @classmethod
    def _missing_(cls, value: object) -> ParseTermination | None:
        return {"stop_sequence": cls.STOP_SEQUENCE, "length": cls.MALFORMED}.get(str(value))

    @property
    def is_clean(self) -> bool:
        """True unless MALFORMED: the response ended where the model meant it to."""
        return self != ParseTermination.MALFORMED

    @property
    def is_stop_sequence(self) -> bool:
        """True only for the format's own stop signal."""
        return self == ParseTermination.STOP_SEQUENCE


class TrainOnWhat(StrEnum):
    """Which tokens of a supervised example carry loss.

    LAST_ASSISTANT_MESSAGE (the default of `build_supervised_example`), LAST_ASSISTANT_TURN
    (every assistant message after the last user one), ALL_ASSISTANT_MESSAGES, ALL_MESSAGES
    (every message's content, not headers), ALL_TOKENS (everything), ALL_USER_AND_SYSTEM_MESSAGES,
    CUSTOMIZED (each message's own `trainable` flag).
    """

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    LAST_ASSISTANT_TURN = "last_assistant_turn"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_MESSAGES = "all_messages"
    ALL_TOKENS = "all_tokens"
    ALL_USER_AND_SYSTEM_MESSAGES = "all_user_and_system_messages"
    CUSTOMIZED = "customized"

    @classmethod
    def coerce(cls, value: TrainOnWhat | str) -> TrainOnWhat:
        """`value` as a member; a bad string is a ValueError listing the valid ones."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"train_on_what={value!r}: expected one of {', '.join(m.value for m in cls)}."
            ) from None


@dataclass(frozen=True)
class RenderContext:
    """Where a message sits in its conversation, as `render_message` needs to know."""

    idx: int
    is_last: bool
    prev_message: Message | None = None
    next_message: Message | None = None
    last_user_index: int = -1
    in_last_assistant_turn: bool = False


@dataclass(frozen=True)
class RenderedMessage:
    """A message's tokens: `header` (never trained but under ALL_TOKENS), `output` (what the
    model writes, end marker included) and `stop_overlap` (the part of a stop string that the
    next header would repeat; appended after the last message of a supervised example)."""

    output: list[ModelInput]
    header: ModelInput | None = None
    stop_overlap: ModelInput | None = None


class SupervisedExample(NamedTuple):
    """`(model_input, weights)`: a conversation's tokens and a loss weight per token.

    Unpacks like tinker-cookbook's pair; `tokens` gives the ids as a list.

    Example:
        >>> ex = SupervisedExample(ModelInput.from_ints([1, 2]), [0.0, 1.0])
        >>> model_input, weights = ex
        >>> ex.tokens
        [1, 2]
    """

    model_input: ModelInput
    weights: torch.Tensor

    @property
    def tokens(self) -> list[int]:
        """The token ids."""
        return self.model_input.to_ints()


@dataclass(frozen=True)
class _Piece:
    tokens: list[int]
    message: int | None = None  # index of the message this piece renders
    kind: str = "header"  # "header", "output" or "stop_overlap"


# -- content helpers ----------------------------------------------------------------------


def ensure_list(content: Content) -> list[ContentPart]:
    """Content as a list of parts (a string becomes one text part)."""
    return [TextPart(type="text", text=content)] if isinstance(content, str) else list(content)


def ensure_text(content: Content) -> str:
    """Content that must be plain text, as a string; raises for thinking or several parts."""
    if isinstance(content, str):
        return content
    if len(content) == 1 and content[0]["type"] == "text":
        return content[0]["text"]
    raise RendererError(f"Expected text content, got {len(content)} parts: {content!r}")


def get_text_content(message: Message) -> str:
    """The visible text of a message: its text parts joined, thinking left out.

    Example:
        >>> get_text_content({"role": "assistant", "content": [
        ...     {"type": "thinking", "thinking": "hm"}, {"type": "text", "text": "4"}]})
        '4'
    """
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p["type"] == "text")


def has_thinking(content: Content) -> bool:
    """Whether content carries reasoning: a thinking part, or an inline `<think>`."""
    if isinstance(content, str):
        return "<think>" in content
    return any(p["type"] == "thinking" for p in content)


def format_content_as_string(content: Content, separator: str = "\n") -> str:
    """Content for logs: thinking as `<think>...</think>`, an image as `<image>URL</image>` or
    `<image>Image(WxH, mode)</image>`, parts joined by `separator`.

    Example:
        >>> format_content_as_string([{"type": "text", "text": "See"},
        ...     {"type": "image", "image": "https://x/cat.png"}], separator=" ")
        'See <image>https://x/cat.png</image>'
    """
    if isinstance(content, str):
        return content
    return separator.join(_part_as_string(part) for part in content)


def _part_as_string(part: Mapping[str, Any]) -> str:
    kind = part.get("type")
    if kind == "text":
        return part["text"]
    if kind == "thinking":
        return f"<think>{part['thinking']}</think>"
    if kind == "image":
        image = part["image"]
        if isinstance(image, str):
            return f"<image>{image}</image>"
        return f"<image>Image({image.size[0]}x{image.size[1]}, {image.mode})</image>"
    raise RendererError(
        f"Unknown content part type: {kind} in {dict(part)!r}; parts are text, thinking or image."
    )


def _tool_call_json(call: ToolCall) -> str:
    # as Qwen's and Hermes' templates write it: the arguments string verbatim
    return f'{{"name": "{call.function.name}", "arguments": {call.function.arguments}}}'


def _parse_tool_call(body: str, raw: str) -> ToolCall | UnparsedToolCall:
    try:
        data = json.loads(body.strip())
    except json.JSONDecodeError as e:
        return UnparsedToolCall(raw_text=raw, error=f"Invalid JSON: {e}")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return UnparsedToolCall(raw_text=raw, error="Missing or invalid 'name' field")
    if not isinstance(data.get("arguments"), dict):
        return UnparsedToolCall(raw_text=raw, error="Missing or invalid 'arguments' field")
    call_id = data.get("id") if isinstance(data.get("id"), str) else None
    return ToolCall(
        function=ToolCall.FunctionBody(name=data["name"], arguments=json.dumps(data["arguments"])),
        id=call_id,
    )


_BLOCKS = re.compile(r"<think>(.*?)</think>|<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_content_blocks(
    content: str,
) -> tuple[list[ContentPart], list[ToolCall | UnparsedToolCall]] | None:
    """Splits `<think>...</think>` and `<tool_call>...</tool_call>` blocks out of text.

    Returns `(parts, tool_calls)` with the text and thinking parts in order (whitespace kept,
    empty blocks dropped), or None when the text has neither tag.

    Example:
        >>> parse_content_blocks("<think>hm</think>4")[0]
        [{'type': 'thinking', 'thinking': 'hm'}, {'type': 'text', 'text': '4'}]
    """
    if "<think>" not in content and "<tool_call>" not in content:
        return None
    parts: list[ContentPart] = []
    calls: list[ToolCall | UnparsedToolCall] = []
    pos = 0
    for match in _BLOCKS.finditer(content):
        if match.start() > pos:
            parts.append(TextPart(type="text", text=content[pos : match.start()]))
        if match.group(1) is not None:
            if match.group(1):
                parts.append(ThinkingPart(type="thinking", thinking=match.group(1)))
        else:
            calls.append(_parse_tool_call(match.group(2), match.group(0)))
        pos = match.end()
    if pos < len(content):
        parts.append(TextPart(type="text", text=content[pos:]))
    return parts, calls


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[Message]:
    """Validates a conversation; returns copies with tool calls as `ToolCall` objects."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got "
            f"{type(messages).__name__}; e.g. [{{'role': 'user', 'content': 'Hi'}}]."
        )
    if not messages:
        raise ValueError("messages is empty; give at least one, e.g. [{'role': 'user', ...}].")
    return [_check_message(m, i) for i, m in enumerate(messages)]


def _check_message(message: Any, i: int) -> Message:
    if not isinstance(message, Mapping):
        raise TypeError(f"messages[{i}] is a {type(message).__name__}, expected a dict.")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ValueError(f"messages[{i}]['role']={role!r}: expected one of {', '.join(ROLES)}.")
    if isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image":
                raise RendererError(
                    f"messages[{i}]['content'] has an image part, but bios-callbacks' renderers "
                    "are text-only; pass text (and thinking) parts."
                )
            if kind not in ("text", "thinking") or not isinstance(part.get(kind), str):
                raise TypeError(
                    f"messages[{i}]['content'] has the part {part!r}; expected "
                    "{'type': 'text', 'text': ...} or {'type': 'thinking', 'thinking': ...}."
                )
        content = [dict(p) for p in content]
    elif not isinstance(content, str):
        raise TypeError(
            f"messages[{i}]['content'] is {type(content).__name__}, expected a string or a "
            "list of text/thinking parts."
        )
    checked: dict[str, Any] = {**message, "role": role, "content": content}
    if "tool_calls" in message:
        checked["tool_calls"] = [_as_tool_call(c, i) for c in message["tool_calls"] or []]
    return checked  # type: ignore[return-value]


def _as_tool_call(call: Any, i: int) -> ToolCall:
    if isinstance(call, ToolCall):
        return call
    function = call.get("function") if isinstance(call, Mapping) else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        arguments = function.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        return ToolCall(
            function=ToolCall.FunctionBody(name=function["name"], arguments=arguments),
            id=call.get("id"),
        )
    raise TypeError(
        f"messages[{i}]['tool_calls'] has {call!r}; expected a ToolCall or "
        "{'function': {'name': ..., 'arguments': ...}}."
    )


# -- the renderer --------------------------------------------------------------------------


class Renderer(ABC):
    """A chat format bound to a tokenizer.

    Subclasses define `render_message`, `get_stop_sequences` and `parse_response`, and
    optionally `_prefix_tokens` (BOS, a default system prompt) and `_get_generation_suffix`.

    Example:
        >>> renderer = get_renderer("chatml", tokenizer)  # doctest: +SKIP
        >>> prompt = renderer.build_generation_prompt(  # doctest: +SKIP
        ...     [{"role": "user", "content": "Hi"}])
        >>> message, termination = renderer.parse_response(sampled_tokens)  # doctest: +SKIP
    """

    name: str = ""
    required_tokens: tuple[str, ...] = ()
    supports_tool_calls: bool = False
    supports_streaming: bool = False  # whether parse_response_streaming works
    disables_thinking: bool = False

    # set by get_renderer
    _renderer_name: str | None = None
    _model_name: str | None = None
    _has_image_processor: bool = False

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer is None:
            raise ValueError(
                f"Renderer {self.name!r} needs a tokenizer, got None; pass "
                "tokenizer=bios_callbacks.tokenizer_utils.get_tokenizer(model_name)."
            )
        self.tokenizer = tokenizer
        self._check_required_tokens()

    # -- what a format defines -----------------------------------------------------------

    @abstractmethod
    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """The header and output tokens of one message."""

    @abstractmethod
    def get_stop_sequences(self) -> list[int] | list[str]:
        """What ends an assistant turn: token ids if the marker is one token, else strings."""

    @abstractmethod
    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """The assistant message in sampled tokens, and how the sample ended."""

    @property
    def has_extension_property(self) -> bool:
        """Whether each turn's prompt extends the previous prompt plus its reply, token for
        token (true when no message renders differently once later messages follow)."""
        return True

    def _prefix_tokens(self, messages: Sequence[Message]) -> list[int]:
        """Tokens before the first message (BOS, a template's default system prompt)."""
        return []

    def _get_generation_suffix(self, role: str, ctx: RenderContext) -> list[int]:
        """The header that asks `role` to write next: an empty message's header."""
        header = self.render_message(Message(role=role, content=""), ctx).header
        return header.to_ints() if header else []

    def parse_response_streaming(self, response: Iterable[int]) -> Iterator[MessageDelta]:
        """Deltas of a reply as it is sampled, then its Message (formats that support it)."""
        raise NotImplementedError(
            f"Renderer {self.name!r} has no streaming parser; use parse_response, or a format "
            "whose turns end in one token ('chatml', 'llama3', 'qwen3', ...)."
        )

    def create_conversation_prefix_with_tools(
        self, tools: list[ToolSpec], system_prompt: str = ""
    ) -> list[Message]:
        """Messages declaring `tools`, to put before a conversation (formats with tool calls)."""
        raise NotImplementedError(
            f"Renderer {self.name!r} has no tool-declaration format; use 'qwen3', "
            "'qwen3_instruct' or 'qwen3_disable_thinking' for tool calling."
        )

    # -- building prompts and examples ----------------------------------------------------

    def build_generation_prompt(
        self,
        messages: Sequence[Mapping[str, Any]],
        role: str = "assistant",
        prefill: str | None = None,
    ) -> ModelInput:
        """Tokens of `messages` followed by the header that asks `role` to write.

        `prefill` is text the reply must start with; it is appended after the header.

        Example:
            >>> msgs = [{"role": "user", "content": "Hi"}]
            >>> renderer.build_generation_prompt(msgs)  # doctest: +SKIP
            ModelInput(tokens=(1, 9690, ...))
        """
        checked = check_messages(messages)
        tokens = [t for piece in self._pieces(checked, generate=role) for t in piece.tokens]
        if prefill:
            tokens += self.tokenizer.encode(prefill, add_special_tokens=False)
        return ModelInput.from_ints(tokens)

    def build_supervised_example(
        self,
        messages: Sequence[Mapping[str, Any]],
        train_on_what: TrainOnWhat | str = TrainOnWhat.LAST_ASSISTANT_MESSAGE,
    ) -> SupervisedExample:
        """`(model_input, weights)` of the whole conversation; weight 1.0 on what to learn.

        The tokens before the first trained message are exactly what `build_generation_prompt`
        gives for that history, so the model learns to continue the prompts it is sampled from.

        Example:
            >>> model_input, weights = renderer.build_supervised_example(  # doctest: +SKIP
            ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
            ...     train_on_what=TrainOnWhat.ALL_ASSISTANT_MESSAGES)
        """
        import torch

        mode = TrainOnWhat.coerce(train_on_what)
        checked = check_messages(messages)
        for i, message in enumerate(checked):
            if (mode == TrainOnWhat.CUSTOMIZED) != ("trainable" in message):
                raise RendererError(
                    f"messages[{i}] {'lacks' if mode == TrainOnWhat.CUSTOMIZED else 'has'} a "
                    f"'trainable' flag with train_on_what={mode.value!r}: give every message "
                    "'trainable' and use CUSTOMIZED, or give none and use another mode."
                )
        turn_start = self._last_assistant_turn_start_index(checked)
        trained = [
            self._output_is_trained(m, i == len(checked) - 1, i >= turn_start, mode)
            for i, m in enumerate(checked)
        ]
        tokens: list[int] = []
        weights: list[float] = []
        for piece in self._pieces(checked, generate=None):
            if mode == TrainOnWhat.ALL_TOKENS:
                weight = 1.0
            elif piece.kind == "header" or piece.message is None:
                weight = 0.0
            else:
                weight = float(trained[piece.message])
            tokens += piece.tokens
            weights += [weight] * len(piece.tokens)
        if not any(weights):
            raise ValueError(
                f"build_supervised_example(train_on_what={mode.value!r}) found nothing to train "
                f"on in a conversation with roles {[m['role'] for m in checked]}; end it with an "
                "assistant message or pick another train_on_what."
            )
        return SupervisedExample(ModelInput.from_ints(tokens), torch.tensor(weights))

    def build_supervised_examples(
        self,
        messages: Sequence[Mapping[str, Any]],
        train_on_what: TrainOnWhat | str = TrainOnWhat.LAST_ASSISTANT_TURN,
    ) -> list[SupervisedExample]:
        """One example when the format extends; else one per trained assistant message, each
        ending at that message, so every one starts with the prompt it was sampled from."""
        mode = TrainOnWhat.coerce(train_on_what)
        if self.has_extension_property:
            return [self.build_supervised_example(messages, train_on_what=mode)]
        checked = check_messages(messages)
        starts = {
            TrainOnWhat.LAST_ASSISTANT_MESSAGE: len(checked) - 1,
            TrainOnWhat.LAST_ASSISTANT_TURN: self._last_assistant_turn_start_index(checked),
            TrainOnWhat.ALL_ASSISTANT_MESSAGES: 0,
        }
        if mode not in starts:
            raise RendererError(
                f"build_supervised_examples cannot split train_on_what={mode.value!r} for "
                f"{self.name!r}, which renders history differently from the turn it trains; "
                "use LAST_ASSISTANT_MESSAGE, LAST_ASSISTANT_TURN or ALL_ASSISTANT_MESSAGES."
            )
        return [
            self.build_supervised_example(checked[: i + 1], TrainOnWhat.LAST_ASSISTANT_MESSAGE)
            for i in range(starts[mode], len(checked))
            if checked[i]["role"] == "assistant"
        ]

    def _pieces(self, messages: list[Message], generate: str | None) -> list[_Piece]:
        """The conversation as token pieces; with `generate`, ends with that role's header."""
        pieces = [_Piece(self._prefix_tokens(messages))]
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        turn_start = self._last_assistant_turn_start_index(messages)
        for i, message in enumerate(messages):
            is_last = i == len(messages) - 1
            ctx = RenderContext(
                idx=i,
                is_last=is_last,
                prev_message=messages[i - 1] if i else None,
                next_message=None if is_last else messages[i + 1],
                last_user_index=last_user,
                in_last_assistant_turn=i >= turn_start,
            )
            rendered = self.render_message(message, ctx)
            if rendered.header:
                pieces.append(_Piece(rendered.header.to_ints(), i, "header"))
            pieces += [_Piece(chunk.to_ints(), i, "output") for chunk in rendered.output]
            if is_last and generate is None and rendered.stop_overlap:
                pieces.append(_Piece(rendered.stop_overlap.to_ints(), i, "stop_overlap"))
        if generate is not None:
            ctx = RenderContext(
                idx=len(messages),
                is_last=True,
                prev_message=messages[-1] if messages else None,
                last_user_index=last_user,
                in_last_assistant_turn=True,
            )
            pieces.append(_Piece(self._get_generation_suffix(generate, ctx)))
        return [p for p in pieces if p.tokens]

    @staticmethod
    def _output_is_trained(
        message: Message, is_last: bool, in_last_turn: bool, mode: TrainOnWhat
    ) -> bool:
        role = message["role"]
        if mode == TrainOnWhat.LAST_ASSISTANT_MESSAGE:
            return is_last and role == "assistant"
        if mode == TrainOnWhat.LAST_ASSISTANT_TURN:
            return in_last_turn and role == "assistant"
        if mode == TrainOnWhat.ALL_ASSISTANT_MESSAGES:
            return role == "assistant"
        if mode == TrainOnWhat.ALL_USER_AND_SYSTEM_MESSAGES:
            return role in ("user", "system")
        if mode == TrainOnWhat.CUSTOMIZED:
            return bool(message["trainable"])
        return True  # ALL_MESSAGES, ALL_TOKENS

    @staticmethod
    def _last_assistant_turn_start_index(messages: Sequence[Message]) -> int:
        """First message of the turn being produced: the one after the last user message."""
        return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1) + 1

    # -- parsing -----------------------------------------------------------------------------

    def _parse_until_stop_token(
        self, response: Sequence[int], stop_id: int
    ) -> tuple[Message, ParseTermination]:
        """Splits a response at its end-of-turn token (else at EOS, else it was cut off).

        A second end-of-turn token means the sampler ignored the stop sequence: an error.
        """
        ids = [int(t) for t in response]
        if ids.count(stop_id) > 1:
            raise RendererError(
                f"parse_response expected at most 1 end-of-turn token ({stop_id}), got "
                f"{ids.count(stop_id)}; sample with stop=renderer.get_stop_sequences()."
            )
        eos = self.tokenizer.eos_token_id
        cut, termination = len(ids), ParseTermination.MALFORMED
        for i, token in enumerate(ids):
            if token == stop_id:
                cut, termination = i, ParseTermination.STOP_SEQUENCE
                break
            if token == eos:
                cut, termination = i, ParseTermination.EOS
                break
        return Message(role="assistant", content=self.decode(ids[:cut])), termination

    # -- tokens ------------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of `tokens`, special tokens included."""
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=False))

    def encode_text(self, text: str) -> list[int]:
        """Tokens of message text: special-token strings in it stay plain text."""
        if not text:
            return []
        return list(
            self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        )

    def encode_markup(self, text: str) -> list[int]:
        """Tokens of a format's own markup, where special-token strings are the markers."""
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def encode_joined(self, head: str, content: str) -> tuple[list[int], list[int]]:
        """`head + content` tokenized as one text, as a chat template does, split where the
        content starts (a token spanning both goes to the content).

        Used for messages the model never writes, whose tokens then match the template even
        when the content starts with whitespace. Needs a fast tokenizer for the split; a slow
        one tokenizes the two apart.
        """
        if not head or not content or not getattr(self.tokenizer, "is_fast", False):
            return self.encode_text(head), self.encode_text(content)
        enc = self.tokenizer(
            head + content,
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=True,
        )
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        cut = next((i for i, (_, end) in enumerate(offsets) if end > len(head)), len(ids))
        return ids[:cut], ids[cut:]

    def special_id(self, token: str) -> int:
        """Id of one of the format's marker tokens."""
        ids = self.encode_markup(token)
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
            "(bios_callbacks.model_info.get_recommended_renderer_name(model_name)) or "
            "'hf_template'."
        )

    # -- interop -----------------------------------------------------------------------------

    def to_openai_message(self, message: Message) -> dict[str, Any]:
        """The message in OpenAI chat format (what `apply_chat_template` takes); thinking is
        inlined as `<think>...</think>` and tool-call arguments stay JSON strings."""
        result: dict[str, Any] = {"role": message["role"], "content": _inline(message["content"])}
        if message.get("tool_calls"):
            result["tool_calls"] = [
                {
                    "type": "function",
                    "id": call.id,
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for call in message["tool_calls"]
            ]
        for key in ("tool_call_id", "name"):
            if message["role"] == "tool" and key in message:
                result[key] = message[key]
        return result

    def _content_text(self, message: Message) -> str:
        """A message's content as one text (thinking inlined). A format without tool calls
        leaves a message's `tool_calls` out, as tinker-cookbook does, and warns."""
        if message.get("tool_calls") and not self.supports_tool_calls:
            warnings.warn(
                f"Renderer {self.name!r} has no tool-call format: a message's tool_calls are "
                "left out of its tokens. Use 'qwen3', 'qwen3_instruct', 'chatml' (Hermes-style "
                "calls) or 'hf_template' (the model's own template) to render them.",
                stacklevel=2,
            )
        return _inline(message["content"])


def _inline(content: Content) -> str:
    return format_content_as_string(content, separator="")


class ParseFailureKind(StrEnum):
    """What went wrong in a parsed response (`classify_parse_failure`).

    `STRUCTURAL`: the response did not end cleanly (`ParseTermination.MALFORMED`: cut off, or
    framed as the format forbids); the conversation cannot be continued faithfully. `CONTENT`:
    it ended cleanly but a tool block in it did not parse; the model can be asked again.
    """

    STRUCTURAL = "structural"
    CONTENT = "content"


PARSE_FAILURE_DETAIL_MAX_CHARS = 16384
"""Longest detail `classify_parse_failure` returns (a model's raw output can be huge)."""

UNTERMINATED_TOOL_BLOCK_ERROR = "unterminated tool block"
"""How the error of a tool block opened but never closed starts (in `unparsed_tool_calls`)."""


def classify_parse_failure(
    message: Message, termination: ParseTermination
) -> tuple[ParseFailureKind, str] | None:
    """`(kind, detail)` for a `parse_response` result that failed, None for a clean one.

    A structural failure wins over unparsed tool calls; a reply with both good and unparsed
    calls is a CONTENT failure (whether to act on the good ones is the caller's choice).

    Example:
        >>> reply = {"role": "assistant", "content": "4"}
        >>> classify_parse_failure(reply, ParseTermination.EOS)
        >>> classify_parse_failure(reply, ParseTermination("length"))[0]
        <ParseFailureKind.STRUCTURAL: 'structural'>
    """
    if not termination.is_clean:
        return (
            ParseFailureKind.STRUCTURAL,
            f"response did not terminate cleanly (termination={termination.value}): it has "
            "neither the format's end-of-turn marker nor EOS",
        )
    unparsed = message.get("unparsed_tool_calls") or []
    if not unparsed:
        return None
    detail = "\n".join(call.error for call in unparsed)
    return ParseFailureKind.CONTENT, detail[:PARSE_FAILURE_DETAIL_MAX_CHARS]


def detect_unterminated_tool_block(
    content: str, open_marker: str, close_marker: str
) -> UnparsedToolCall | None:
    """An `UnparsedToolCall` for a tool block opened in `content` but never closed (its raw
    text runs from the last unmatched `open_marker`), or None when the markers balance.

    Example:
        >>> markers = "<tool_call>", "</tool_call>"
        >>> detect_unterminated_tool_block("<tool_call>{}</tool_call>", *markers)
        >>> detect_unterminated_tool_block('<tool_call>{"na', *markers).raw_text
        '<tool_call>{"na'
    """
    opened = content.count(open_marker)
    if opened == 0 or opened <= content.count(close_marker):
        return None
    return UnparsedToolCall(
        raw_text=content[content.rfind(open_marker) :][:PARSE_FAILURE_DETAIL_MAX_CHARS],
        error=f"{UNTERMINATED_TOOL_BLOCK_ERROR}: '{open_marker}' without '{close_marker}'",
    )


def find_first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of `stops` to occur in `text` begins, or None when none does.

    Example:
        >>> find_first_stop("Paris. Question: next", ["Answer:", " Question:"])
        6
    """
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def tool_calls_text(calls: Sequence[ToolCall]) -> str:
    """Hermes-style tool calls (Qwen's): `<tool_call>\\n{json}\\n</tool_call>`, one a line."""
    return "\n".join(f"<tool_call>\n{_tool_call_json(c)}\n</tool_call>" for c in calls)


def _drop_call_separators(text: str) -> str:
    """Undoes `tool_calls_text`'s layout: the newline written before each call."""
    return re.sub(r"\n(?=<tool_call>)", "", text)


def split_tool_calls(message: Message) -> Message:
    """Moves `<tool_call>` blocks out of a parsed message's text into `tool_calls` (and
    `unparsed_tool_calls`); a block left open is reported there too."""
    content = message["content"]
    if not isinstance(content, str) or "<tool_call>" not in content:
        return message
    content = _drop_call_separators(content)
    pieces = re.split(r"(<tool_call>.*?</tool_call>)", content, flags=re.DOTALL)
    calls = [
        _parse_tool_call(p[len("<tool_call>") : -len("</tool_call>")], p) for p in pieces[1::2]
    ]
    text = "".join(pieces[::2])
    out: Message = {**message, "content": text}
    parsed = [c for c in calls if isinstance(c, ToolCall)]
    failed = [c for c in calls if isinstance(c, UnparsedToolCall)]
    dangling = detect_unterminated_tool_block(content, "<tool_call>", "</tool_call>")
    if dangling is not None:
        failed.append(dangling)
    if parsed:
        out["tool_calls"] = parsed
    if failed:
        out["unparsed_tool_calls"] = failed
    return out


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


_PROBE = "BIOS_RENDERER_PROBE"


def render_template(
    tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool, **kwargs: Any
) -> str:
    """The tokenizer's own chat template applied to `messages`, as text."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


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


__all__ = [
    "PARSE_FAILURE_DETAIL_MAX_CHARS",
    "ROLES",
    "UNTERMINATED_TOOL_BLOCK_ERROR",
    "Content",
    "ContentPart",
    "ImagePart",
    "Message",
    "ParseFailureKind",
    "ParseTermination",
    "Preamble",
    "RenderContext",
    "RenderedMessage",
    "Renderer",
    "RendererError",
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
    "_longest_matching_suffix_prefix",
    "check_messages",
    "classify_parse_failure",
    "detect_unterminated_tool_block",
    "ensure_list",
    "ensure_text",
    "format_content_as_string",
    "get_text_content",
    "has_thinking",
    "parse_content_blocks",
    "split_tool_calls",
    "tool_calls_text",
]
