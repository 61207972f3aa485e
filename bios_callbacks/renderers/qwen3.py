"""Qwen3: ChatML turns with `<think>` reasoning, Hermes tool calls and tool responses.

Three variants, as Qwen ships them: `qwen3` (hybrid models, thinking on), the same with
thinking off (`qwen3_disable_thinking`: the prompt ends in an empty think block), and
`qwen3_instruct` (the 2507 Instruct models, which never think).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bios_callbacks.renderers.base import (
    ContentPart,
    Message,
    ParseTermination,
    RenderContext,
    RenderedMessage,
    RendererError,
    ToolCall,
    ToolSpec,
    UnparsedToolCall,
    _drop_call_separators,
    detect_unterminated_tool_block,
    has_thinking,
    parse_content_blocks,
    tool_calls_text,
)
from bios_callbacks.renderers.chatml import IM_START, ChatMLRenderer
from bios_callbacks.types import ModelInput

EMPTY_THINKING = "<think>\n\n</think>\n\n"


def _frame(reasoning: str) -> str:
    """Reasoning as the template writes it on the turn being produced."""
    return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"


def _unframe(parts: list[ContentPart]) -> list[ContentPart]:
    """Undoes `_frame`: padding newlines are framing, an empty block is no reasoning."""
    out: list[ContentPart] = []
    after_block = False
    for part in parts:
        if part["type"] == "thinking":
            if part["thinking"].strip("\n"):
                out.append({"type": "thinking", "thinking": part["thinking"].strip("\n")})
            after_block = True
            continue
        text = part["text"].lstrip("\n") if after_block else part["text"]
        if text:
            out.append({"type": "text", "text": text})
        after_block = False
    return out


class Qwen3Renderer(ChatMLRenderer):
    """Qwen3 with thinking on, token for token as its chat template (enable_thinking=True).

    The reply being produced (the last message, after a user message) is framed as
    `<think>\\n{reasoning}\\n</think>\\n\\n{text}`, with an empty block when it has no
    reasoning. Earlier assistant messages lose their reasoning, as the template drops it, so
    the format does not extend turn to turn; `strip_thinking_from_history=False` keeps it
    (and the extension property, which multi-turn RL wants). Tool messages are user turns
    wrapped in `<tool_response>` (each its own turn, where the template groups consecutive
    ones). `parse_response` returns thinking and text parts and `tool_calls`.

    Example:
        >>> r = get_renderer("qwen3", tokenizer)  # doctest: +SKIP
        >>> reply = tokenizer.encode("<think>\\nhm\\n</think>\\n\\n4<|im_end|>")  # doctest: +SKIP
        >>> r.parse_response(reply)[0]["content"]  # doctest: +SKIP
        [{'type': 'thinking', 'thinking': 'hm'}, {'type': 'text', 'text': '4'}]
    """

    name = "qwen3"
    frames_thinking = True

    def __init__(self, tokenizer: Any, strip_thinking_from_history: bool = True) -> None:
        super().__init__(tokenizer)
        self.strip_thinking_from_history = strip_thinking_from_history

    @property
    def has_extension_property(self) -> bool:
        """Only when history keeps its reasoning."""
        return not self.strip_thinking_from_history

    def _frames(self, message: Message, ctx: RenderContext) -> bool:
        """Whether this is a turn the template frames: an assistant reply after a user
        message that is the last one (or any such reply when history keeps reasoning)."""
        if not self.frames_thinking or message["role"] != "assistant" or ctx.last_user_index < 0:
            return False
        return ctx.is_last or not self.strip_thinking_from_history

    def _assistant_text(self, message: Message, ctx: RenderContext) -> str:
        content = message["content"]
        frames = self._frames(message, ctx)
        if isinstance(content, list):
            strip = self.strip_thinking_from_history and not ctx.is_last
            pieces, after_block = [], False
            for part in content:
                if part["type"] == "thinking":
                    if not strip:
                        thinking = part["thinking"]
                        pieces.append(_frame(thinking) if frames else f"<think>{thinking}</think>")
                        after_block = frames
                    continue
                pieces.append(part["text"].lstrip("\n") if after_block else part["text"])
                after_block = False
            text = "".join(pieces)
        elif frames and "</think>" in content:
            reasoning, _, rest = content.partition("</think>")
            text = _frame(reasoning.rpartition("<think>")[2]) + rest.lstrip("\n")
        else:
            text = content
        has_text = bool(text)
        if frames and not has_thinking(content):
            text = self._empty_block() + text.lstrip("\n")
        if message.get("tool_calls"):
            text += ("\n" if has_text else "") + tool_calls_text(message["tool_calls"])
        return text

    def _empty_block(self) -> str:
        """What a framed reply without reasoning starts with (in the output: the model
        writes it)."""
        return EMPTY_THINKING

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """ChatML turns; assistant replies framed as above, tool results as user turns."""
        role = message["role"]
        if role == "assistant":
            text = self._assistant_text(message, ctx)
        elif role == "tool":
            text = f"<tool_response>\n{self._content_text(message)}\n</tool_response>"
        else:
            text = self._content_text(message)
        if ctx.idx == 0 and role == "system":
            text = self._preamble.system_prefix + text
        qwen_role = "user" if role == "tool" else role
        markup = self.encode_markup(("\n" if ctx.idx else "") + IM_START)
        if role == "assistant":
            head, content = self.encode_text(self.header_text(qwen_role)), self.encode_text(text)
        else:
            head, content = self.encode_joined(self.header_text(qwen_role), text)
        return RenderedMessage(
            header=ModelInput.from_ints(markup + head),
            output=[ModelInput.from_ints([*content, self._end_id])],
        )

    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """The reply before `<|im_end|>`: `<think>` blocks become thinking parts,
        `<tool_call>` blocks `tool_calls` (or `unparsed_tool_calls`). A response that did not
        end cleanly comes back as its raw text."""
        message, termination = self._parse_until_stop_token(response, self._end_id)
        if not termination.is_clean:
            return message, termination
        content = message["content"]
        assert isinstance(content, str)
        blocks = parse_content_blocks(_drop_call_separators(content))
        if blocks is not None:
            parts, calls = blocks
            message["content"] = _unframe(parts) if self.frames_thinking else parts
            parsed = [c for c in calls if isinstance(c, ToolCall)]
            failed = [c for c in calls if isinstance(c, UnparsedToolCall)]
            if parsed:
                message["tool_calls"] = parsed
            if failed:
                message["unparsed_tool_calls"] = failed
        dangling = detect_unterminated_tool_block(content, "<tool_call>", "</tool_call>")
        if dangling is not None:
            message["unparsed_tool_calls"] = [*message.get("unparsed_tool_calls", []), dangling]
        return message, termination

    def to_openai_message(self, message: Message) -> dict[str, Any]:
        """OpenAI format with reasoning as `reasoning_content`, as Qwen3's template reads it."""
        result = super().to_openai_message(message)
        content = message["content"]
        if isinstance(content, list):
            result["content"] = "".join(p["text"] for p in content if p["type"] == "text")
            reasoning = "".join(p["thinking"] for p in content if p["type"] == "thinking")
            if reasoning:
                result["reasoning_content"] = reasoning
        return result

    def create_conversation_prefix_with_tools(
        self, tools: list[ToolSpec], system_prompt: str = ""
    ) -> list[Message]:
        """A system message declaring `tools` as Qwen3's template does (`tools=` in
        `apply_chat_template`), after `system_prompt` if given; no tools, no declaration.

        Example:
            >>> r.create_conversation_prefix_with_tools([spec], "Be brief.")  # doctest: +SKIP
            [{'role': 'system', 'content': 'Be brief.\\n\\n# Tools\\n\\n...'}]
        """
        if not tools:
            return [Message(role="system", content=system_prompt)]
        lines = "".join(
            "\n" + json.dumps({"type": "function", "function": t}, ensure_ascii=False)
            for t in tools
        )
        declaration = (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>{lines}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )
        content = f"{system_prompt}\n\n{declaration}" if system_prompt else declaration
        return [Message(role="system", content=content)]


class Qwen3DisableThinkingRenderer(Qwen3Renderer):
    """Qwen3 with thinking off (its template's enable_thinking=False): the prompt ends in an
    empty think block, so the model answers directly. The block is part of the prompt, so a
    supervised reply trains only what follows it; a reply with reasoning is refused.
    """

    name = "qwen3_disable_thinking"
    disables_thinking = True

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """As qwen3, with the empty block of a produced reply moved into its header."""
        if message["role"] == "assistant" and ctx.last_user_index < 0:
            raise RendererError(
                f"messages[{ctx.idx}] is an assistant turn in a conversation with no user "
                "message: Qwen3's template writes the empty think block only after one, but "
                "'qwen3_disable_thinking' prompts always end in it. Add a user message, or use "
                "'qwen3'."
            )
        if not self._frames(message, ctx):
            return super().render_message(message, ctx)
        if has_thinking(message["content"]):
            raise RendererError(
                f"messages[{ctx.idx}] has reasoning, but 'qwen3_disable_thinking' prompts the "
                "model not to reason (its prompt closes the think block before the reply); use "
                "'qwen3', or drop the reasoning from that message."
            )
        rendered = super().render_message(message, ctx)
        assert rendered.header is not None
        body = rendered.output[0].to_ints()
        block = self.encode_markup(EMPTY_THINKING)
        if body[: len(block)] == block:
            body = body[len(block) :]
        else:  # the block merged with the text after it: tokenize the text on its own
            text = self._assistant_text(message, ctx)[len(EMPTY_THINKING) :]
            body = [*self.encode_text(text), self._end_id]
        return RenderedMessage(
            header=ModelInput.from_ints(rendered.header.to_ints() + block),
            output=[ModelInput.from_ints(body)],
        )

    def _get_generation_suffix(self, role: str, ctx: RenderContext) -> list[int]:
        """The assistant header and the empty block, with or without a user message."""
        header = Qwen3Renderer.render_message(self, Message(role=role, content=""), ctx).header
        assert header is not None
        block = self.encode_markup(EMPTY_THINKING) if role == "assistant" else []
        return header.to_ints() + block


class Qwen3InstructRenderer(Qwen3Renderer):
    """Qwen3 2507 Instruct models: no think blocks at all (reasoning parts, if given, are
    written inline as `<think>...</think>`); plain ChatML turns otherwise."""

    name = "qwen3_instruct"
    frames_thinking = False

    @property
    def has_extension_property(self) -> bool:
        """Always: nothing is dropped from history unless reasoning parts are given."""
        return True
