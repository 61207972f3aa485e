"""Qwen3 renderers against Qwen3's chat template (on an offline Qwen-like tokenizer), and their
thinking, tool-call and tool-response handling."""

from __future__ import annotations

import json

import pytest
from renderer_tokenizers import QWEN3_INSTRUCT_TEMPLATE, qwen3_tokenizer

from bios_callbacks import renderers
from bios_callbacks.renderers import (
    ParseFailureKind,
    ParseTermination,
    RenderContext,
    TextPart,
    ThinkingPart,
    ToolCall,
    TrainOnWhat,
    classify_parse_failure,
    get_text_content,
)

WEATHER = ToolCall(
    function=ToolCall.FunctionBody(name="get_weather", arguments='{"location": "San Francisco"}'),
    id="call_123",
)
BASIC_3TURN = [
    {"role": "user", "content": "Hello, how are you?"},
    {"role": "assistant", "content": "I'm fine, thank you!"},
    {"role": "user", "content": "What is the capital of France?"},
]
SYSTEM_3TURN = [
    {"role": "system", "content": "You are a helpful coding assistant."},
    {"role": "user", "content": "How do I reverse a string in Python?"},
    {"role": "assistant", "content": "You can use slicing: `s[::-1]`."},
    {"role": "user", "content": "Can you show me another way?"},
]
TOOL_CALL = [
    {"role": "user", "content": "What's the weather in San Francisco?"},
    {"role": "assistant", "content": "I'll check the weather for you.", "tool_calls": [WEATHER]},
    {"role": "tool", "content": '{"temperature": 72, "condition": "sunny"}'},
    {"role": "assistant", "content": "The weather in San Francisco is sunny with 72°F."},
]
SPEC = {
    "name": "get_weather",
    "description": "Get the current weather for a location",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def qwen3_tok(tokenizer):
    return qwen3_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def instruct_tok(tokenizer):
    return qwen3_tokenizer(tokenizer, QWEN3_INSTRUCT_TEMPLATE)


def hf(tok, renderer, messages, add_generation_prompt, tokenize=True, **kwargs):
    openai = [renderer.to_openai_message(m) for m in messages]
    out = tok.apply_chat_template(
        openai,
        add_generation_prompt=add_generation_prompt,
        tokenize=tokenize,
        return_dict=False,
        **kwargs,
    )
    return list(out) if tokenize else out


VARIANTS = [("qwen3", {}), ("qwen3_disable_thinking", {"enable_thinking": False})]


@pytest.mark.parametrize("conversation", [BASIC_3TURN, SYSTEM_3TURN, TOOL_CALL[:3]])
@pytest.mark.parametrize(("name", "kwargs"), VARIANTS)
def test_prompt_matches_the_qwen3_template(qwen3_tok, name, kwargs, conversation):
    renderer = renderers.get_renderer(name, qwen3_tok)
    expected = hf(qwen3_tok, renderer, conversation, True, **kwargs)
    assert renderer.build_generation_prompt(conversation).to_ints() == expected


@pytest.mark.parametrize("conversation", [BASIC_3TURN, SYSTEM_3TURN, TOOL_CALL[:3]])
def test_instruct_prompt_matches_its_template(instruct_tok, conversation):
    renderer = renderers.get_renderer("qwen3_instruct", instruct_tok)
    expected = hf(instruct_tok, renderer, conversation, True)
    assert renderer.build_generation_prompt(conversation).to_ints() == expected


@pytest.mark.parametrize("conversation", [BASIC_3TURN[:2], SYSTEM_3TURN[:3], TOOL_CALL])
@pytest.mark.parametrize(
    ("name", "kwargs"), [("qwen3", {}), ("qwen3_disable_thinking", {"enable_thinking": False})]
)
def test_supervised_example_renders_the_template(qwen3_tok, name, kwargs, conversation):
    renderer = renderers.get_renderer(name, qwen3_tok)
    example = renderer.build_supervised_example(conversation)
    expected = hf(qwen3_tok, renderer, conversation, False, tokenize=False, **kwargs)
    assert qwen3_tok.decode(example.tokens) == expected.removesuffix("\n")


def test_instruct_supervised_example_renders_its_template(instruct_tok):
    renderer = renderers.get_renderer("qwen3_instruct", instruct_tok)
    for conversation in (BASIC_3TURN[:2], SYSTEM_3TURN[:3], TOOL_CALL):
        example = renderer.build_supervised_example(conversation)
        expected = hf(instruct_tok, renderer, conversation, False, tokenize=False)
        assert instruct_tok.decode(example.tokens) == expected.removesuffix("\n")


def test_reasoning_with_padding_newlines_tokenizes_as_the_template(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    conversation = [
        {"role": "user", "content": "Hello, how are you?"},
        {
            "role": "assistant",
            "content": [
                ThinkingPart(type="thinking", thinking="\nLet me respond politely.\n"),
                TextPart(type="text", text="\n\nI'm fine, thank you!"),
            ],
        },
    ]
    example = renderer.build_supervised_example(conversation)
    text = hf(qwen3_tok, renderer, conversation, False, tokenize=False).rstrip("\n")
    assert example.tokens == qwen3_tok.encode(text, add_special_tokens=False)


def test_tool_declaration_matches_the_templates_tools_argument(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    prefix = renderer.create_conversation_prefix_with_tools([SPEC], "Be brief.")
    conversation = [*prefix, *TOOL_CALL[:3]]
    expected = qwen3_tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}]
        + [renderer.to_openai_message(m) for m in TOOL_CALL[:3]],
        tools=[{"type": "function", "function": SPEC}],  # OpenAI's form, as Qwen documents
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert renderer.build_generation_prompt(conversation).to_ints() == list(expected)


# -- thinking ---------------------------------------------------------------------------------


def test_thinking_round_trips_through_parse(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    user = {"role": "user", "content": "What is 2+2?"}
    reply = {
        "role": "assistant",
        "content": [
            ThinkingPart(type="thinking", thinking="Let me work through this."),
            TextPart(type="text", text="The answer is 4."),
        ],
    }
    example = renderer.build_supervised_example([user, reply])
    prompt = renderer.build_generation_prompt([user]).to_ints()
    action = example.tokens[len(prompt) :]
    message, termination = renderer.parse_response(action)
    assert termination.is_stop_sequence
    assert message["content"] == reply["content"]
    assert get_text_content(message) == "The answer is 4."
    again = renderer.build_supervised_example([user, message])
    assert again.tokens == prompt + action


def test_history_drops_reasoning_unless_asked_to_keep_it(qwen3_tok):
    thought = [ThinkingPart(type="thinking", thinking="SECRET"), TextPart(type="text", text="4")]
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": thought},
        {"role": "user", "content": "3+3?"},
    ]
    stripping = renderers.get_renderer("qwen3", qwen3_tok)
    assert "SECRET" not in qwen3_tok.decode(stripping.build_generation_prompt(messages).tokens)
    assert not stripping.has_extension_property
    keeping = type(stripping)(qwen3_tok, strip_thinking_from_history=False)
    assert "SECRET" in qwen3_tok.decode(keeping.build_generation_prompt(messages).tokens)
    assert keeping.has_extension_property
    through = keeping.build_supervised_example(messages[:2]).tokens
    assert keeping.build_generation_prompt(messages).to_ints()[: len(through)] == through
    through = stripping.build_supervised_example(messages[:2]).tokens
    assert stripping.build_generation_prompt(messages).to_ints()[: len(through)] != through


def test_without_extension_each_trained_reply_gets_its_own_example(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    messages = [
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": [
                ThinkingPart(type="thinking", thinking="add"),
                TextPart(type="text", text="4"),
            ],
        },
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"},
    ]
    examples = renderer.build_supervised_examples(messages, TrainOnWhat.ALL_ASSISTANT_MESSAGES)
    assert len(examples) == 2
    for end, example in zip((1, 3), examples, strict=True):
        first = example.weights.tolist().index(1.0)
        assert example.tokens[:first] == renderer.build_generation_prompt(messages[:end]).to_ints()


def test_thinking_off_refuses_a_reply_that_reasoned(qwen3_tok):
    renderer = renderers.get_renderer("qwen3_disable_thinking", qwen3_tok)
    reasoned = {
        "role": "assistant",
        "content": [ThinkingPart(type="thinking", thinking="hm"), TextPart(type="text", text="4")],
    }
    with pytest.raises(ValueError, match=r"'qwen3_disable_thinking'.*use 'qwen3'"):
        renderer.build_supervised_example([{"role": "user", "content": "2+2?"}, reasoned])


def test_thinking_off_refuses_a_reply_with_no_user_message_before_it(qwen3_tok):
    renderer = renderers.get_renderer("qwen3_disable_thinking", qwen3_tok)
    system, reply = {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}
    with pytest.raises(ValueError, match=r"no user message.*Add a user message"):
        renderer.build_supervised_example([system, reply])
    renderer.build_supervised_example([system, {"role": "user", "content": "q"}, reply])


def test_an_empty_tool_list_declares_nothing(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    assert renderer.create_conversation_prefix_with_tools([], "Be brief.") == [
        {"role": "system", "content": "Be brief."}
    ]
    [declared] = renderer.create_conversation_prefix_with_tools([SPEC], "Be brief.")
    assert (
        declared["content"].startswith("Be brief.\n\n# Tools") and "<tools>" in declared["content"]
    )


def test_thinking_off_trains_only_what_follows_the_empty_block(qwen3_tok):
    renderer = renderers.get_renderer("qwen3_disable_thinking", qwen3_tok)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "\n4"}]
    example = renderer.build_supervised_example(messages)
    weights = example.weights.tolist()
    trained = qwen3_tok.decode([t for t, w in zip(example.tokens, weights, strict=True) if w])
    assert trained == "4<|im_end|>"
    prompt = renderer.build_generation_prompt(messages[:1])
    assert qwen3_tok.decode(prompt.tokens).endswith("<think>\n\n</think>\n\n")
    assert example.tokens[: prompt.length] == prompt.to_ints()


def test_a_callers_prefill_follows_the_formats_prompt(qwen3_tok):
    for name in ("qwen3", "qwen3_disable_thinking", "qwen3_instruct"):
        renderer = renderers.get_renderer(name, qwen3_tok)
        messages = [{"role": "user", "content": "q"}]
        plain = qwen3_tok.decode(renderer.build_generation_prompt(messages).tokens)
        prefilled = renderer.build_generation_prompt(messages, prefill="Sure")
        assert qwen3_tok.decode(prefilled.tokens) == plain + "Sure"


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "qwen3_disable_thinking", "qwen3_instruct"])
def test_end_of_turn_parsing(qwen3_tok, name):
    renderer = renderers.get_renderer(name, qwen3_tok)
    tokens = qwen3_tok.encode("53 + 18 = 71<|im_end|>", add_special_tokens=False)
    message, termination = renderer.parse_response(tokens)
    assert (message["content"], termination) == ("53 + 18 = 71", ParseTermination.STOP_SEQUENCE)
    message, termination = renderer.parse_response(tokens[:-1])
    assert message["content"] == "53 + 18 = 71" and not termination.is_clean
    with pytest.raises(ValueError, match=r"expected .* 1"):
        renderer.parse_response([*tokens, tokens[-1]])


@pytest.mark.parametrize("name", ["qwen3", "qwen3_instruct"])
def test_tool_calls_parse_out_of_the_text(qwen3_tok, name):
    renderer = renderers.get_renderer(name, qwen3_tok)
    text = (
        "I'll search.\n<tool_call>\n"
        '{"name": "search", "arguments": {"query": "weather in NYC"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call><|im_end|>'
    )
    message, termination = renderer.parse_response(qwen3_tok.encode(text))
    assert termination.is_clean
    assert [c.function.name for c in message["tool_calls"]] == ["search", "clock"]
    assert json.loads(message["tool_calls"][0].function.arguments) == {"query": "weather in NYC"}
    assert "<tool_call>" not in get_text_content(message)


def test_broken_and_unterminated_tool_calls_are_reported(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    bad = "<tool_call>\n{not json}\n</tool_call><|im_end|>"
    message, _ = renderer.parse_response(qwen3_tok.encode(bad))
    assert "Invalid JSON" in message["unparsed_tool_calls"][0].error
    dangling = 'x<tool_call>\n{"name": "f"<|im_end|>'
    message, termination = renderer.parse_response(qwen3_tok.encode(dangling))
    assert termination.is_clean
    assert "unterminated" in message["unparsed_tool_calls"][0].error
    assert classify_parse_failure(message, termination)[0] == ParseFailureKind.CONTENT
    cut_off = renderer.parse_response(qwen3_tok.encode('<tool_call>\n{"name": "f"'))
    assert classify_parse_failure(*cut_off)[0] == ParseFailureKind.STRUCTURAL
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>'
    called = renderer.parse_response(qwen3_tok.encode(call))
    assert called[0]["tool_calls"] and classify_parse_failure(*called) is None


def test_tool_call_round_trip(qwen3_tok):
    renderer = renderers.get_renderer("qwen3_instruct", qwen3_tok)
    messages = TOOL_CALL[:2]
    prompt = renderer.build_generation_prompt(messages[:1]).to_ints()
    action = renderer.build_supervised_example(messages).tokens[len(prompt) :]
    message, _ = renderer.parse_response(action)
    assert message["tool_calls"] == [ToolCall(function=WEATHER.function)]
    assert get_text_content(message) == messages[1]["content"]


def test_tool_results_are_user_turns_wrapped_in_tool_response(qwen3_tok):
    renderer = renderers.get_renderer("qwen3", qwen3_tok)
    tool = {"role": "tool", "content": '{"weather": "sunny"}'}
    rendered = renderer.render_message(tool, RenderContext(idx=0, is_last=False))
    assert rendered.header is not None
    assert qwen3_tok.decode(rendered.header.tokens) == "<|im_start|>user\n"
    output = qwen3_tok.decode(rendered.output[0].tokens)
    assert output == '<tool_response>\n{"weather": "sunny"}\n</tool_response><|im_end|>'
