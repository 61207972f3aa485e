"""Streaming parse of sampled replies (`bios_callbacks.renderers.streaming`) with Qwen3's
format on an offline Qwen-like tokenizer: what a user watching the stream sees, and that it
ends in the same Message as the batch `parse_response`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from renderer_tokenizers import qwen3_tokenizer

from bios_callbacks.renderers import ParseTermination, get_renderer
from bios_callbacks.renderers.streaming import (
    StreamingMessageHeader,
    StreamingParser,
    StreamingTextDelta,
    StreamingThinkingDelta,
    Utf8TokenDecoder,
    _longest_matching_suffix_prefix,
    stream_response,
)


@pytest.fixture(scope="module")
def qtok(tokenizer):
    return qwen3_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def renderer(qtok):
    return get_renderer("qwen3", qtok)


@pytest.fixture(scope="module")
def end(qtok):
    return qtok.convert_tokens_to_ids("<|im_end|>")


def _encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _stream(renderer, end, tokens) -> list:
    return list(
        stream_response(
            tokens, tokenizer=renderer.tokenizer, end_token=end, parse_final=renderer.parse_response
        )
    )


def _kind_and_text(delta) -> tuple[str, str]:
    if isinstance(delta, StreamingThinkingDelta):
        return "thinking", delta.thinking
    return "text", delta.text


def _joined(items) -> tuple[str, str]:
    thinking = "".join(d.thinking for d in items if isinstance(d, StreamingThinkingDelta))
    text = "".join(d.text for d in items if isinstance(d, StreamingTextDelta))
    return thinking, text


REPLIES = [
    "Hello, world!<|im_end|>",
    "<think>\nLet me think 🤔\n</think>\n\nParty 🎉!<|im_end|>",
    "<think>\n\n</think>\n\nNo reasoning here.<|im_end|>",
    "<think>\nfirst</think>\n\nmid<think>second</think>end<|im_end|>",
    "<think>\nis 1 < 2? yes </b>\n</think>\n\nso 1 <2 and <div>ok</div><|im_end|>",
    "<|im_end|>",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_joined_deltas_are_the_batch_parts_and_the_last_item_is_the_batch_message(
    renderer, end, reply
):
    tokens = _encode(renderer.tokenizer, reply)
    batch, termination = renderer.parse_response(tokens)
    assert termination == ParseTermination.STOP_SEQUENCE
    items = _stream(renderer, end, tokens)

    assert items[0] == StreamingMessageHeader(role="assistant")
    assert items[-1] == batch
    assert not any(isinstance(d, dict) for d in items[:-1])
    thinking, text = _joined(items)
    content = batch["content"]
    if isinstance(content, str):
        assert (thinking, text) == ("", content)
    else:
        # Deltas carry the sampled text; the parsed parts drop the `<think>\n...\n</think>\n\n`
        # framing newlines (and an empty block).
        want_thinking = "".join(p["thinking"] for p in content if p["type"] == "thinking")
        want_text = "".join(p["text"] for p in content if p["type"] == "text")
        assert thinking.replace("\n", "") == want_thinking.replace("\n", "")
        assert text.lstrip("\n") == want_text


def test_deltas_alternate_with_a_growing_content_index(renderer, end):
    tokens = _encode(renderer.tokenizer, "intro<think>t1</think>x1<think>t2</think>x2<|im_end|>")
    deltas = [d for d in _stream(renderer, end, tokens) if not isinstance(d, dict)][1:]
    blocks: list[tuple[str, int, str]] = []
    for d in deltas:
        kind, chunk = _kind_and_text(d)
        if blocks and blocks[-1][:2] == (kind, d.content_index):
            blocks[-1] = (kind, d.content_index, blocks[-1][2] + chunk)
        else:
            blocks.append((kind, d.content_index, chunk))
    assert blocks == [
        ("text", 0, "intro"),
        ("thinking", 1, "t1"),
        ("text", 2, "x1"),
        ("thinking", 3, "t2"),
        ("text", 4, "x2"),
    ]


def test_an_emoji_split_over_tokens_is_never_shown_in_half(renderer, end):
    tok = renderer.tokenizer
    tokens = _encode(tok, "<think>hmm 🤔</think>Party 🎉!<|im_end|>")
    # the tokenizer really splits the emoji's bytes over tokens
    assert any("\ufffd" in tok.decode([t]) for t in tokens)
    deltas = [d for d in _stream(renderer, end, tokens) if not isinstance(d, dict)]
    chunks = [_kind_and_text(d)[1] for d in deltas[1:]]
    assert all("\ufffd" not in c for c in chunks)
    assert any("🤔" in c for c in chunks) and any("🎉" in c for c in chunks)
    assert _joined(deltas) == ("hmm 🤔", "Party 🎉!")


def _emitted_after_each_token(renderer, end, tokens) -> list[str]:
    """The text+thinking shown so far, after each token is read (tags excluded)."""
    parser = StreamingParser(renderer.tokenizer, end, renderer.parse_response)
    shown, seen = "", []
    for token in tokens:
        for d in parser.feed(token):
            if not isinstance(d, StreamingMessageHeader):
                shown += _kind_and_text(d)[1]
        seen.append(shown)
    return seen


def test_text_is_shown_as_soon_as_it_cannot_start_a_tag(renderer, end):
    tok = renderer.tokenizer
    # Outside thinking only "<think>" matters; inside, only "</think>".
    reply = ["so", " <", "th", "x", "<think>", "a", " </", "th", "in", "y", "</think>", "ok"]
    tokens = [t for p in reply for t in _encode(tok, p)]
    assert [tok.decode([t]) for t in tokens] == reply
    assert _emitted_after_each_token(renderer, end, tokens) == [
        "so",
        "so ",  # "<" held
        "so ",  # "<th" held
        "so <thx",  # "<thx" is no tag: released
        "so <thx",
        "so <thxa",
        "so <thxa ",  # "</" held
        "so <thxa ",
        "so <thxa ",  # "</thin" held
        "so <thxa </thiny",
        "so <thxa </thiny",
        "so <thxa </thinyok",
    ]


def test_reading_stops_at_the_end_token(renderer, end):
    tok = renderer.tokenizer
    tokens = _encode(tok, "<think>r</think>done<|im_end|>ignored<|im_end|>")
    items = _stream(renderer, end, tokens)
    assert _joined(items) == ("r", "done")
    cut = tokens.index(end) + 1
    assert items[-1] == renderer.parse_response(tokens[:cut])[0]


def test_a_cut_off_reply_still_streams_and_ends_in_the_batch_message(renderer, end):
    tokens = _encode(renderer.tokenizer, "<think>reasoning</think>partial <th")
    items = _stream(renderer, end, tokens)
    assert _joined(items) == ("reasoning", "partial <th")  # held text is released at the end
    message, termination = renderer.parse_response(tokens)
    assert termination == ParseTermination.MALFORMED
    assert items[-1] == message


def test_deltas_come_while_the_sampler_is_still_producing(renderer, end):
    tokens = _encode(renderer.tokenizer, "Hello there, friend<|im_end|>")
    produced: list[int] = []

    def sampler() -> Iterator[int]:
        for t in tokens:
            produced.append(t)
            yield t

    stream = stream_response(
        sampler(), tokenizer=renderer.tokenizer, end_token=end, parse_final=renderer.parse_response
    )
    assert next(stream) == StreamingMessageHeader(role="assistant")
    assert next(stream) == StreamingTextDelta(text="Hello")
    assert len(produced) == 1


def test_an_empty_stream_still_gives_header_and_message(renderer, end):
    items = _stream(renderer, end, [])
    assert items == [StreamingMessageHeader(role="assistant"), renderer.parse_response([])[0]]


def test_utf8_decoder_holds_an_unfinished_character(qtok):
    tokens = _encode(qtok, " 🎉!")
    assert len(tokens) > 2
    decoder = Utf8TokenDecoder(qtok)
    assert decoder.decode(tokens[:1]) is None and decoder.has_pending()
    out = [decoder.decode([t]) for t in tokens[1:]]
    assert "".join(o for o in out if o) == " 🎉!"
    assert not decoder.has_pending() and decoder.flush() == ""
    decoder.decode(tokens[:1])
    assert decoder.flush() == qtok.decode(tokens[:1])  # the end of a stream gives what is held
    decoder.decode(tokens[:1])
    decoder.reset()
    assert not decoder.has_pending()


def test_longest_matching_suffix_prefix():
    assert _longest_matching_suffix_prefix("a <thin", "<think>") == 5
    assert _longest_matching_suffix_prefix("a <think>", "<think>") == 0  # a whole tag is found
    assert _longest_matching_suffix_prefix("a <tx", "<think>") == 0
    assert _longest_matching_suffix_prefix("x</", "</think>") == 2
    assert _longest_matching_suffix_prefix("", "<think>") == 0


@pytest.mark.parametrize("name", ["qwen3", "qwen3_instruct", "chatml"])
def test_renderers_stream_their_replies_and_split_a_cut_off_one(qtok, name):
    renderer = get_renderer(name, qtok)
    assert renderer.supports_streaming
    whole = _encode(qtok, "<think>\nsum\n</think>\n\n4<|im_end|>")
    items = list(renderer.parse_response_streaming(whole))
    assert items[-1] == renderer.parse_response(whole)[0]

    cut_off = list(renderer.parse_response_streaming(_encode(qtok, "<think>\nsum\n</think>\n\n4")))
    if name == "qwen3":  # the batch parse of a cut-off reply keeps the raw text; this splits it
        assert cut_off[-1]["content"] == [
            {"type": "thinking", "thinking": "sum"},
            {"type": "text", "text": "4"},
        ]
    assert _joined(cut_off[1:-1]) == _joined(items[1:-1])


def test_a_format_without_one_end_token_says_it_cannot_stream(tokenizer):
    renderer = get_renderer("role_colon", tokenizer)
    assert not renderer.supports_streaming
    with pytest.raises(NotImplementedError, match="'role_colon' has no streaming parser"):
        next(iter(renderer.parse_response_streaming([1, 2])))
