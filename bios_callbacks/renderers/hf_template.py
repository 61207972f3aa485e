"""Any model's own chat template (the Jinja one shipped with its tokenizer)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from bios_callbacks.renderers.base import (
    _PROBE,
    Message,
    ParseTermination,
    RenderContext,
    RenderedMessage,
    Renderer,
    RendererError,
    _Piece,
    find_first_stop,
    render_template,
)


def _mark(i: int) -> str:
    return f"\ue000{i}\ue001"  # private-use characters: no template touches them


class HFTemplateRenderer(Renderer):
    """Delegates rendering to `tokenizer.apply_chat_template`.

    The template is rendered with a placeholder for each message's content; the template's
    own text is tokenized with its markers, and the content, put where the placeholders were,
    is tokenized as plain text. Each assistant turn is split where the template's generation
    prompt for its history ends, so training and sampling see the same tokens. The template
    must render earlier turns the same way whatever follows them, and insert content as given
    (or trimmed); otherwise this raises and a dedicated renderer is needed.

    The end-of-turn marker is read off the template: the text it puts after an assistant
    reply, minus trailing whitespace (one special token -> a token-id stop, else a string).

    Example:
        >>> r = HFTemplateRenderer(tokenizer)  # doctest: +SKIP
        >>> r.get_stop_sequences()  # doctest: +SKIP
        [2]
    """

    name = "hf_template"
    supports_tool_calls = True

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise ValueError(
                f"Renderer 'hf_template' needs a tokenizer with a chat template, but {name!r} "
                "has none. Use 'role_colon' for base models, or set tokenizer.chat_template."
            )
        padded = self._render([{"role": "user", "content": f" {_PROBE} "}], False)
        self._trims = f" {_PROBE} " not in padded
        self._stop = self._probe_stop_sequences()

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return render_template(self.tokenizer, messages, add_generation_prompt)

    def _probe_stop_sequences(self) -> list[int] | list[str]:
        user = [{"role": "user", "content": _PROBE}]
        prompt = self._render(user, add_generation_prompt=True)
        full = self._render([*user, {"role": "assistant", "content": _PROBE}], False)
        reply_at = full.find(_PROBE, len(prompt))
        marker = full[reply_at + len(_PROBE) :].rstrip() if reply_at >= 0 else ""
        if marker:
            ids = self.encode_markup(marker)
            special = set(getattr(self.tokenizer, "all_special_ids", []))
            return [ids[0]] if len(ids) == 1 and ids[0] in special else [marker]
        eos = self.tokenizer.eos_token_id
        return [eos] if eos is not None else []

    def render_message(self, message: Message, ctx: RenderContext) -> RenderedMessage:
        """Not available: a template renders whole conversations, not single messages."""
        raise RendererError(
            "'hf_template' renders whole conversations through the tokenizer's chat template; "
            "use build_generation_prompt or build_supervised_example."
        )

    def _content(self, message: Message) -> str:
        text = self._content_text(message)
        return text.strip() if self._trims else text

    def _pieces(self, messages: list[Message], generate: str | None) -> list[_Piece]:
        if generate not in (None, "assistant"):
            raise RendererError(f"'hf_template' can only prompt the assistant, not {generate!r}.")
        openai = [self.to_openai_message(m) for m in messages]
        marked = [{**m, "content": _mark(i)} for i, m in enumerate(openai)]
        text = self._render(marked, generate is not None)
        contents = [self._content(m) for m in messages]
        self._check_content_is_inserted(text, openai, contents, generate is not None)
        cuts, replies = {0, len(text)}, {}
        for i, message in enumerate(messages):
            start = text.index(_mark(i))
            cuts |= {start, start + len(_mark(i))}
            if message["role"] != "assistant":
                continue
            prompt = self._render(marked[:i], add_generation_prompt=True)
            turn = self._render(marked[: i + 1], add_generation_prompt=False).rstrip()
            if not (turn.startswith(prompt) and text.startswith(turn) and start >= len(prompt)):
                raise ValueError(
                    f"The chat template of {self.tokenizer.name_or_path!r} renders assistant "
                    f"message {i} differently depending on what follows it, so its tokens "
                    "cannot be located for training; use a renderer written for this format "
                    "(e.g. 'chatml', 'llama3' or 'qwen3')."
                )
            cuts |= {len(prompt), len(turn)}
            replies[i] = (len(prompt), len(turn))
        marks = {text.index(_mark(i)): i for i in range(len(messages))}
        bounds = sorted(cuts)
        pieces, joined = [], set()
        for a, b in itertools.pairwise(bounds):
            if a in marks:
                i = marks[a]
                if i not in joined:
                    pieces.append(_Piece(self.encode_text(contents[i]), i, "output"))
                continue
            owner = next((i for i, (s, e) in replies.items() if s <= a < e), None)
            i = marks.get(b)
            if owner is None and i is not None and messages[i]["role"] != "assistant":
                # text the model never writes: its header's text tail and content tokenize
                # together, as the template's output does
                markup, tail = self._split_after_last_marker(text[a:b])
                head, content = self.encode_joined(tail, contents[i])
                joined.add(i)
                pieces += [
                    _Piece(self.encode_markup(markup) + head, i, "header"),
                    _Piece(content, i, "output"),
                ]
                continue
            pieces.append(
                _Piece(
                    self.encode_markup(text[a:b]), owner, "header" if owner is None else "output"
                )
            )
        return [p for p in pieces if p.tokens]

    def _split_after_last_marker(self, text: str) -> tuple[str, str]:
        """`text` split after its last added token (a marker), into markup and plain text."""
        ends = [text.rfind(t) + len(t) for t in self.tokenizer.get_added_vocab() if t in text]
        cut = max(ends, default=0)
        return text[:cut], text[cut:]

    def _check_content_is_inserted(
        self,
        marked_text: str,
        openai: list[dict[str, Any]],
        contents: list[str],
        add_generation_prompt: bool,
    ) -> None:
        if any(marked_text.count(_mark(i)) != 1 for i in range(len(openai))):
            raise RendererError(
                f"The chat template of {self.tokenizer.name_or_path!r} does not write each "
                "message's content exactly once; use a renderer written for this format."
            )
        expected = marked_text
        for i, content in enumerate(contents):
            expected = expected.replace(_mark(i), content)
        if self._render(openai, add_generation_prompt) != expected:
            raise RendererError(
                f"The chat template of {self.tokenizer.name_or_path!r} changes message content "
                "(e.g. splits out reasoning), which 'hf_template' cannot follow token by token; "
                "use a renderer written for this format (e.g. 'qwen3')."
            )

    def get_stop_sequences(self) -> list[int] | list[str]:
        """The template's end-of-turn marker (e.g. `[id of <|im_end|>]`), else `[eos id]`."""
        return list(self._stop)

    def parse_response(self, response: Sequence[int]) -> tuple[Message, ParseTermination]:
        """The reply before the template's end marker (or EOS); MALFORMED if neither came."""
        stop = self._stop[0] if self._stop else None
        if isinstance(stop, int):
            return self._parse_until_stop_token(response, stop)
        eos = self.tokenizer.eos_token_id
        ids = [int(t) for t in response]
        ended = eos is not None and eos in ids
        text = self.decode(ids[: ids.index(eos)] if ended else ids)
        termination = ParseTermination.EOS if ended else ParseTermination.MALFORMED
        at = find_first_stop(text, self._stop)
        if at is not None:
            text, termination = text[:at], ParseTermination.STOP_SEQUENCE
        return Message(role="assistant", content=text), termination
