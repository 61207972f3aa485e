"""ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n` (SmolLM2, Qwen2 and Qwen2.5)."""

from __future__ import annotations

from typing import Any

from bios_callbacks.renderers.base import Message, Preamble, Renderer, Segment, probe_preamble

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ChatMLRenderer(Renderer):
    """ChatML turns; a default system prompt is taken from the tokenizer's template, if any.

    Example:
        >>> r = ChatMLRenderer(tokenizer)  # doctest: +SKIP
        >>> prompt = r.build_generation_prompt([{"role": "user", "content": "Hi"}])
        >>> tokenizer.decode(prompt.tokens)
        '<|im_start|>system\\nYou are ... SmolLM, ...<|im_start|>assistant\\n'
    """

    name = "chatml"
    required_tokens = (IM_START, IM_END)

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._end_id = self._single_token_id(IM_END)
        self._preamble = probe_preamble(
            tokenizer, f"{IM_START}system\n", f"{IM_START}user\n", Preamble()
        )

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        has_system = messages[0]["role"] == "system"
        pre = self._preamble
        segments = [Segment(pre.with_system if has_system else pre.without_system)]
        for i, message in enumerate(messages):
            content = message["content"]
            if i == 0 and has_system:
                content = pre.system_prefix + content
            turn = i if message["role"] == "assistant" else None
            segments += [
                Segment(f"{IM_START}{message['role']}\n"),
                Segment(content + IM_END, turn),
                Segment("\n"),
            ]
        if add_generation_prompt:
            segments.append(Segment(f"{IM_START}assistant\n"))
        return segments

    def get_stop_sequences(self) -> list[int]:
        """`[id of <|im_end|>]`."""
        return [self._end_id]
