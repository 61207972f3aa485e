"""Any model's own chat template (the Jinja one shipped with its tokenizer)."""

from __future__ import annotations

from typing import Any

from bios_callbacks.renderers.base import _PROBE, Message, Renderer, Segment, render_template


class HFTemplateRenderer(Renderer):
    """Delegates rendering to `tokenizer.apply_chat_template`.

    Assistant turns are located by rendering growing prefixes of the conversation, so the
    template must render earlier turns the same way whatever follows them. The end-of-turn
    marker is read off the template: the text it puts after an assistant reply, minus trailing
    whitespace (one special token -> a token-id stop, otherwise a string stop).

    Example:
        >>> r = HFTemplateRenderer(tokenizer)  # doctest: +SKIP
        >>> r.get_stop_sequences()
        [2]
    """

    name = "hf_template"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"Renderer 'hf_template' needs a tokenizer with a chat template, but {name!r} "
                "has none. Use 'role_colon' for base models, or set tokenizer.chat_template."
            )
        self._stop = self._probe_stop_sequences()

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return render_template(self.tokenizer, messages, add_generation_prompt)

    def _probe_stop_sequences(self) -> list[int] | list[str]:
        user = [{"role": "user", "content": _PROBE}]
        prompt = self._render(user, add_generation_prompt=True)
        full = self._render([*user, {"role": "assistant", "content": _PROBE}], False)
        reply_at = full.find(_PROBE, len(prompt))
        marker = full[reply_at + len(_PROBE) :].rstrip() if reply_at >= 0 else ""
        if marker:
            ids = self._encode(marker)
            special = set(getattr(self.tokenizer, "all_special_ids", []))
            return [ids[0]] if len(ids) == 1 and ids[0] in special else [marker]
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    def _segments(self, messages: list[Message], add_generation_prompt: bool) -> list[Segment]:
        full = self._render(messages, add_generation_prompt)
        if add_generation_prompt:  # a prompt trains nothing: no need to find the turns
            return [Segment(full)]
        segments, pos = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], add_generation_prompt=True)
            turn = self._render(messages[: i + 1], add_generation_prompt=False).rstrip()
            if not (turn.startswith(prompt) and full.startswith(turn)):
                raise ValueError(
                    f"The chat template of {self.tokenizer.name_or_path!r} renders assistant "
                    f"message {i} differently depending on what follows it, so its tokens "
                    "cannot be located for training; use a renderer written for this format "
                    "(e.g. 'chatml' or 'llama3')."
                )
            segments += [Segment(full[pos : len(prompt)]), Segment(turn[len(prompt) :], i)]
            pos = len(turn)
        segments.append(Segment(full[pos:]))
        return segments

    def get_stop_sequences(self) -> list[int] | list[str]:
        """The template's end-of-turn marker (e.g. `[id of <|im_end|>]`), else `[eos id]`."""
        return list(self._stop)
