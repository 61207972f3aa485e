"""Chat renderers against the SmolLM2 tokenizer's own template, and a Llama 3 variant of it."""

from __future__ import annotations

import copy

import pytest

from bios_callbacks import renderers

SYSTEM = {"role": "system", "content": "You answer in one word."}
USER = {"role": "user", "content": "What is the capital of France?"}
REPLY = {"role": "assistant", "content": "Paris"}
CONVERSATIONS = {
    "user_only": [USER],
    "with_system": [SYSTEM, USER],
    "multi_turn": [SYSTEM, USER, REPLY, {"role": "user", "content": "And of Italy?"}],
    "tool": [USER, {"role": "assistant", "content": "call(x)"}, {"role": "tool", "content": "42"}],
    "unicode_and_spaces": [{"role": "user", "content": "  Ça va? 日本語\n\n- a\n- b  "}],
}
DIALOGUES = {  # conversations ending on an assistant turn, for supervised examples
    "one_turn": [USER, REPLY],
    "two_turns": [SYSTEM, USER, REPLY, {"role": "user", "content": "Italy?"}, REPLY],
    "reply_starts_with_newlines": [USER, {"role": "assistant", "content": "\n\n Rome\n"}],
    "empty_reply": [USER, {"role": "assistant", "content": ""}],
}

# Meta's Llama 3 template (3.0 form): BOS, then header / trimmed content / <|eot_id|> per turn.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5's template without tools: its own default system prompt, otherwise plain ChatML.
QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def template_ids(tokenizer, messages, add_generation_prompt):
    return list(
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    )


def last_reply_tokens(renderer, messages):
    """The tokens a model would sample for the final reply: the trained part of the example."""
    example = renderer.build_supervised_example(messages, train_on="last_assistant")
    return [t for t, w in zip(example.tokens, example.weights, strict=True) if w == 1.0]


def weighted_text(tokenizer, example):
    return tokenizer.decode(
        [t for t, w in zip(example.tokens, example.weights, strict=True) if w == 1.0]
    )


@pytest.fixture(scope="module")
def llama3_tokenizer(tokenizer):
    """The SmolLM2 tokenizer given Llama 3's special tokens and chat template."""
    tok = copy.deepcopy(tokenizer)
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok.add_special_tokens({"additional_special_tokens": [*special, "<|eot_id|>"]})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def qwen_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = QWEN_TEMPLATE
    return tok


# -- names -------------------------------------------------------------------------------


def test_renderer_names_and_unknown_name_lists_choices(tokenizer):
    assert renderers.renderer_names() == ["chatml", "hf_template", "llama3", "role_colon"]
    with pytest.raises(ValueError, match=r"'chatm1'.*chatml, hf_template, llama3, role_colon"):
        renderers.get_renderer(name="chatm1", tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "chatml"),
        ("Qwen/Qwen2.5-0.5B-Instruct", "chatml"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama3"),
        ("google/gemma-2-2b-it", "hf_template"),
    ],
)
def test_default_renderer_name(model_name, expected):
    assert renderers.default_renderer_name(model_name) == expected


# -- chatml / hf_template on SmolLM2: token-for-token equal to the model's template -----------


@pytest.mark.parametrize("name", ["chatml", "hf_template"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=str)
def test_prompt_matches_chat_template(tokenizer, name, conversation):
    messages = CONVERSATIONS[conversation]
    renderer = renderers.get_renderer(name=name, tokenizer=tokenizer)
    prompt = renderer.build_generation_prompt(messages)
    assert prompt.to_ints() == template_ids(tokenizer, messages, add_generation_prompt=True)


def test_chatml_uses_the_templates_default_system_prompt(tokenizer):
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    text = tokenizer.decode(renderer.build_generation_prompt([USER]).tokens)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    with_system = tokenizer.decode(renderer.build_generation_prompt([SYSTEM, USER]).tokens)
    assert "SmolLM" not in with_system


def test_chatml_reads_a_qwen_style_default_system_prompt(qwen_tokenizer):
    renderer = renderers.get_renderer(name="chatml", tokenizer=qwen_tokenizer)
    for messages in CONVERSATIONS.values():
        expected = template_ids(qwen_tokenizer, messages, add_generation_prompt=True)
        assert renderer.build_generation_prompt(messages).to_ints() == expected
    assert QWEN_SYSTEM in qwen_tokenizer.decode(renderer.build_generation_prompt([USER]).tokens)


@pytest.mark.parametrize("name", ["chatml", "hf_template"])
@pytest.mark.parametrize("dialogue", DIALOGUES, ids=str)
def test_supervised_example_matches_template_and_weights_replies(tokenizer, name, dialogue):
    messages = DIALOGUES[dialogue]
    renderer = renderers.get_renderer(name=name, tokenizer=tokenizer)
    example = renderer.build_supervised_example(messages)
    assert example.tokens == template_ids(tokenizer, messages, add_generation_prompt=False)
    assert len(example.weights) == len(example.tokens)
    replies = "".join(m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant")
    weighted = weighted_text(tokenizer, example)
    # a reply starting with a newline shares a token with the header's "\n", which then trains
    shared_newline = dialogue == "reply_starts_with_newlines"
    assert weighted == ("\n" + replies if shared_newline else replies)
    assert example.tokens[-1] == tokenizer.encode("\n")[0]  # trailing newline is not trained
    assert example.weights[-1] == 0.0


def test_train_on_last_assistant_weights_only_the_final_reply(tokenizer):
    messages = [USER, {"role": "assistant", "content": "Lyon"}, USER, REPLY]
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    example = renderer.build_supervised_example(messages, train_on="last_assistant")
    assert weighted_text(tokenizer, example) == "Paris<|im_end|>"
    every = renderer.build_supervised_example(messages)
    assert weighted_text(tokenizer, every) == "Lyon<|im_end|>Paris<|im_end|>"


def test_boundary_tokens_come_from_the_whole_string(tokenizer):
    """A reply starting with a newline merges with the header's newline when tokenized whole."""
    messages = DIALOGUES["reply_starts_with_newlines"]
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    prompt = renderer.build_generation_prompt(messages[:1]).to_ints()
    reply = tokenizer.encode(messages[1]["content"] + "<|im_end|>\n", add_special_tokens=False)
    whole = template_ids(tokenizer, messages, add_generation_prompt=False)
    assert prompt + reply != whole  # tokenizing the pieces separately would be wrong here
    example = renderer.build_supervised_example(messages)
    assert example.tokens == whole
    straddling = whole[len(prompt) - 1]  # "\n\n\n": header newline + the reply's newlines
    assert example.weights[len(prompt) - 1] == 1.0, tokenizer.decode([straddling])


# -- parsing --------------------------------------------------------------------------------


def test_chatml_round_trip_and_terminations(tokenizer):
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert renderer.get_stop_sequences() == [im_end]
    for name, messages in DIALOGUES.items():
        if name != "reply_starts_with_newlines":  # its first token is shared with the header
            reply = last_reply_tokens(renderer, messages)
            assert renderer.parse_response(reply) == (messages[-1], "stop")
    cut = tokenizer.encode("The capital is Par", add_special_tokens=False)
    assert renderer.parse_response(cut) == (
        {"role": "assistant", "content": "The capital is Par"},
        "length",
    )


# -- llama3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama3", "hf_template"])
def test_llama3_matches_its_template(llama3_tokenizer, name):
    renderer = renderers.get_renderer(name=name, tokenizer=llama3_tokenizer)
    for messages in CONVERSATIONS.values():
        expected = template_ids(llama3_tokenizer, messages, add_generation_prompt=True)
        assert renderer.build_generation_prompt(messages).to_ints() == expected
    for messages in DIALOGUES.values():
        example = renderer.build_supervised_example(messages)
        assert example.tokens == template_ids(llama3_tokenizer, messages, False)
        replies = [
            m["content"].strip() + "<|eot_id|>" for m in messages if m["role"] == "assistant"
        ]
        assert weighted_text(llama3_tokenizer, example) == "".join(replies)


def test_llama3_round_trip_stop_eos_and_length(llama3_tokenizer):
    renderer = renderers.get_renderer(name="llama3", tokenizer=llama3_tokenizer)
    eot = llama3_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert renderer.get_stop_sequences() == [eot]
    from_template = renderers.get_renderer(name="hf_template", tokenizer=llama3_tokenizer)
    assert from_template.get_stop_sequences() == [eot]
    reply = last_reply_tokens(renderer, DIALOGUES["two_turns"])
    assert reply[-1] == eot
    assert renderer.parse_response(reply) == (REPLY, "stop")
    padded = last_reply_tokens(renderer, [USER, {"role": "assistant", "content": " Paris \n"}])
    assert renderer.parse_response(padded) == (REPLY, "stop")  # trimmed, as the template does
    paris = llama3_tokenizer.encode("Paris", add_special_tokens=False)
    eos = llama3_tokenizer.eos_token_id
    assert renderer.parse_response([*paris, eos]) == (REPLY, "eos")
    assert renderer.parse_response(paris) == (REPLY, "length")


def test_llama3_on_a_tokenizer_without_its_tokens_names_them(tokenizer):
    with pytest.raises(ValueError, match=r"'llama3'.*<\|begin_of_text\|>.*<\|eot_id\|>"):
        renderers.get_renderer(name="llama3", tokenizer=tokenizer)


# -- role_colon -----------------------------------------------------------------------------


def test_role_colon_prompt_supervised_and_parse(tokenizer):
    renderer = renderers.get_renderer(name="role_colon", tokenizer=tokenizer)
    prompt = renderer.build_generation_prompt([SYSTEM, USER])
    assert tokenizer.decode(prompt.tokens) == (
        "System: You answer in one word.\n\nUser: What is the capital of France?\n\nAssistant:"
    )
    assert renderer.get_stop_sequences() == ["\n\nUser:"]
    messages = [USER, REPLY, USER, REPLY]
    example = renderer.build_supervised_example(messages)
    assert tokenizer.decode(example.tokens).endswith("Assistant: Paris\n\nUser:")
    assert weighted_text(tokenizer, example) == " Paris\n\nUser: Paris\n\nUser:"
    head = renderer.build_generation_prompt(messages[:-1]).to_ints()
    assert example.tokens[: len(head)] == head
    assert renderer.parse_response(example.tokens[len(head) :]) == (REPLY, "stop")
    rambling = tokenizer.encode(" Paris and", add_special_tokens=False)
    rambled = {"role": "assistant", "content": "Paris and"}
    assert renderer.parse_response(rambling) == (rambled, "length")


# -- bad input ------------------------------------------------------------------------------


def test_bad_messages_get_clear_errors(tokenizer):
    renderer = renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"messages\[1\]\['role'\]='bot'.*system, user"):
        renderer.build_generation_prompt([USER, {"role": "bot", "content": "hi"}])
    with pytest.raises(TypeError, match=r"list of"):
        renderer.build_generation_prompt("What is the capital of France?")
    with pytest.raises(ValueError, match=r"at least one assistant message"):
        renderer.build_supervised_example([SYSTEM, USER])
    with pytest.raises(ValueError, match=r"train_on='first'.*all_assistant, last_assistant"):
        renderer.build_supervised_example([USER, REPLY], train_on="first")


def test_hf_template_needs_a_template(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match=r"no(ne)? .*chat template|has none"):
        renderers.get_renderer(name="hf_template", tokenizer=bare)


def test_hf_template_refuses_templates_that_rewrite_earlier_turns(tokenizer):
    forgetful = copy.deepcopy(tokenizer)  # drops every assistant reply but the last, like Qwen3
    forgetful.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    renderer = renderers.get_renderer(name="hf_template", tokenizer=forgetful)
    assert renderer.build_supervised_example([USER, REPLY]).tokens  # one reply is fine
    with pytest.raises(ValueError, match=r"assistant message 1 differently"):
        renderer.build_supervised_example([USER, REPLY, USER, REPLY])


def test_hf_template_with_a_plain_text_end_marker_stops_on_the_string(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = (
        "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + ' [END]\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
    )
    renderer = renderers.get_renderer(name="hf_template", tokenizer=plain)
    assert renderer.get_stop_sequences() == [" [END]"]
    example = renderer.build_supervised_example([USER, REPLY])
    assert example.tokens == template_ids(plain, [USER, REPLY], add_generation_prompt=False)
    assert weighted_text(plain, example) == "Paris [END]"
    sampled = plain.encode("Paris [END]\nuser: more", add_special_tokens=False)
    assert renderer.parse_response(sampled) == (REPLY, "stop")
