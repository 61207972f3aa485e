"""ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n` (SmolLM2, Qwen2 and Qwen2.5)."""

from __future__ import annotations

from bios_callbacks.renderers.turns import TurnRenderer

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ChatMLRenderer(TurnRenderer):
    """ChatML turns; a default system prompt is taken from the tokenizer's template, if any.

    Example:
        >>> r = ChatMLRenderer(tokenizer)  # doctest: +SKIP
        >>> prompt = r.build_generation_prompt([{"role": "user", "content": "Hi"}])
        >>> tokenizer.decode(prompt.tokens)
        '<|im_start|>system\\nYou are ... SmolLM, ...<|im_start|>assistant\\n'
    """

    name = "chatml"
    required_tokens = (IM_START, IM_END)
    end = IM_END
    after_turn = "\n"

    @staticmethod
    def header(role: str) -> str:
        return f"{IM_START}{role}\n"
