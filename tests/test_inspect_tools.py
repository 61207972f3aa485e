"""Inspect tool use through the bios provider, with a real model taught to call a tool: its
call reaches Inspect, Inspect runs the tool, the result comes back into the prompt and the
model answers from it. Tool choices that cannot be met are clear errors."""

from __future__ import annotations

import asyncio

import pytest
import torch
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageTool,
    ChatMessageUser,
    GenerateConfig,
    Model,
)
from inspect_ai.scorer import match
from inspect_ai.solver import generate, use_tools
from inspect_ai.tool import ToolCall as InspectToolCall
from inspect_ai.tool import ToolDef, ToolFunction, ToolInfo, tool
from renderer_tokenizers import qwen3_tokenizer
from tiny import make_tiny_model

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling
from bios_callbacks.exceptions import ConfigurationError
from bios_callbacks.renderers import get_renderer
from bios_callbacks.renderers.base import ToolCall, ToolSpec, UnparsedToolCall
from bios_callbacks.sampling.client import SamplingClient

QUESTION = "What is 2 plus 3?"
# as the bridge hands an earlier call back to the renderer: arguments in compact JSON
CALL = ToolCall(
    id="call_0_0", function=ToolCall.FunctionBody(name="add", arguments='{"x":2,"y":3}')
)


@tool
def add():
    async def execute(x: int, y: int) -> int:
        """Add two integers.

        Args:
            x: First addend.
            y: Second addend.
        """
        return x + y

    return execute


def _info() -> ToolInfo:
    """What Inspect hands a provider for `add`."""
    tool_def = ToolDef(add())
    return ToolInfo(
        name=tool_def.name, description=tool_def.description, parameters=tool_def.parameters
    )


def _spec(info: ToolInfo) -> ToolSpec:
    parameters = info.parameters.model_dump(exclude_none=True)
    return ToolSpec(name=info.name, description=info.description, parameters=parameters)


@pytest.fixture(scope="module")
def caller(tokenizer):
    """A tiny model trained to answer QUESTION by calling `add`, then to answer from its result."""
    tok = qwen3_tokenizer(tokenizer)
    renderer = get_renderer("qwen3_instruct", tok)
    declared = renderer.create_conversation_prefix_with_tools([_spec(_info())])
    user = {"role": "user", "content": QUESTION}
    call = {"role": "assistant", "content": "", "tool_calls": [CALL]}
    result = {"role": "tool", "content": "5", "tool_call_id": "call_0_0", "name": "add"}
    conversation = [*declared, user, call, result, {"role": "assistant", "content": "5"}]
    model_input, weights = renderer.build_supervised_example(
        conversation, train_on_what="all_assistant_messages"
    )
    ids = torch.tensor([model_input.to_ints()])
    labels = torch.where(weights.bool(), ids[0], -100)[None]
    model = make_tiny_model(tok, seed=0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(200):  # seeds 0-2 learn both replies in 55-60 steps
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        if step % 10 == 9 and _predicts(model, ids, labels):
            break
    assert _predicts(model, ids, labels), "the model did not learn the replies"
    model.eval()
    client = SamplingClient.from_module(model, tok)
    yield client
    client.close()


def _predicts(model, ids: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether every trained token is the model's greedy choice given the ones before it."""
    with torch.no_grad():
        predicted = model(input_ids=ids).logits[0, :-1].argmax(-1)
    trained = labels[0, 1:] != -100
    return bool((predicted[trained] == labels[0, 1:][trained]).all())


def _api(client, renderer_name: str = "qwen3_instruct") -> InspectAPIFromBiosSampling:
    return InspectAPIFromBiosSampling(
        model_name="caller", renderer_name=renderer_name, sampling_client=client
    )


def test_inspect_runs_the_tool_the_model_calls_and_scores_its_answer(caller, tmp_path):
    task = Task(
        dataset=[Sample(input=QUESTION, target="5")],
        solver=[use_tools(add()), generate()],
        scorer=match(),
    )
    with preserved_terminal():
        [log] = eval(
            task,
            model=Model(_api(caller), GenerateConfig(max_tokens=48)),
            log_dir=str(tmp_path),
            display="none",
        )

    assert log.status == "success", log.error
    assert log.results.scores[0].metrics["accuracy"].value == 1.0
    messages = log.samples[0].messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    [made] = messages[1].tool_calls
    assert (made.function, made.arguments, made.parse_error) == ("add", {"x": 2, "y": 3}, None)
    assert messages[2].text == "5" and messages[2].tool_call_id == made.id
    assert messages[3].text == "5" and not messages[3].tool_calls


def test_a_tool_call_ends_its_choice_with_stop_reason_tool_calls(caller):
    output = asyncio.run(
        _api(caller).generate(
            input=[ChatMessageUser(content=QUESTION)],
            tools=[_info()],
            tool_choice="auto",
            config=GenerateConfig(max_tokens=48),
        )
    )
    assert output.choices[0].stop_reason == "tool_calls"
    assert output.message.text == ""


def test_a_required_tool_call_that_is_not_made_is_an_error(caller):
    answered = [
        ChatMessageUser(content=QUESTION),
        ChatMessageAssistant(
            content="",
            tool_calls=[InspectToolCall(id="call_0_0", function="add", arguments={"x": 2, "y": 3})],
        ),
        ChatMessageTool(content="5", tool_call_id="call_0_0", function="add"),
    ]
    api = _api(caller)
    for choice in ("any", ToolFunction(name="add")):
        with pytest.raises(ConfigurationError, match="requires a tool call"):
            asyncio.run(
                api.generate(
                    input=answered,
                    tools=[_info()],
                    tool_choice=choice,
                    config=GenerateConfig(max_tokens=16),
                )
            )


def test_tools_on_a_renderer_without_a_tool_format_name_it(caller):
    with pytest.raises(ConfigurationError, match="'chatml' does not support Inspect AI tool-use"):
        asyncio.run(
            _api(caller, "chatml").generate(
                input=[ChatMessageUser(content=QUESTION)],
                tools=[_info()],
                tool_choice="auto",
                config=GenerateConfig(max_tokens=8),
            )
        )


def test_calls_that_do_not_parse_reach_inspect_with_their_error(caller):
    from bios_callbacks.eval.inspect_utils import _message_to_inspect_tool_calls

    bad_arguments = ToolCall(function=ToolCall.FunctionBody(name="add", arguments="[2, 3]"))
    unparsed = UnparsedToolCall(raw_text="<tool_call>{oops</tool_call>", error="Invalid JSON")
    reply = {"role": "assistant", "content": "", "tool_calls": [bad_arguments]}
    reply["unparsed_tool_calls"] = [unparsed]

    first, second = _message_to_inspect_tool_calls(reply, choice_index=1)

    assert first.function == "add" and "JSON object" in first.parse_error
    assert (second.function, second.parse_error) == ("unparsed_tool_call", "Invalid JSON")
    assert second.arguments == {"raw_text": unparsed.raw_text} and first.id != second.id
