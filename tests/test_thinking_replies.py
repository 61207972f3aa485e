"""Replies with a Qwen3 thinking block, from a real model taught to think before it answers:
graders and Inspect scorers see the answer's text, and Inspect gets the reasoning on request."""

from __future__ import annotations

import asyncio

import pytest
import torch
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ContentReasoning, GenerateConfig, Model
from inspect_ai.scorer import exact
from renderer_tokenizers import qwen3_tokenizer
from tiny import make_tiny_model

from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling
from bios_callbacks.evaluators import QAEvaluator
from bios_callbacks.renderers import get_renderer
from bios_callbacks.sampling.client import SamplingClient

QUESTION = "Capital of France?"
REPLY = "<think>\nThe capital of France.\n</think>\n\nParis<|im_end|>"


@pytest.fixture(scope="module")
def thinker(tokenizer):
    """A tiny model trained until greedy decoding of QUESTION's Qwen3 prompt gives REPLY."""
    tok = qwen3_tokenizer(tokenizer)
    renderer = get_renderer("qwen3", tok)
    prompt = renderer.build_generation_prompt([{"role": "user", "content": QUESTION}]).to_ints()
    reply = tok.encode(REPLY, add_special_tokens=False)
    model = make_tiny_model(tok, seed=0).train()
    ids = torch.tensor([prompt + reply])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100  # learn the reply only
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # seeds 0-2 need 40-50 steps
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        greedy = model.generate(torch.tensor([prompt]), max_new_tokens=len(reply), do_sample=False)
    assert greedy[0, len(prompt) :].tolist() == reply, "the model did not learn the reply"
    client = SamplingClient.from_module(model, tok)
    yield client, renderer
    client.close()


def test_qa_grades_the_answer_not_the_reasoning(thinker):
    client, renderer = thinker
    evaluator = QAEvaluator(
        [{"input": QUESTION, "target": "Paris"}],
        grader_fn=lambda response, target: response == target,
        renderer=renderer,
        max_tokens=16,
    )
    assert asyncio.run(evaluator(client))["accuracy"] == 1.0
    assert evaluator.transcripts()[0].response == "Paris"


@pytest.mark.parametrize("include_reasoning", [False, True])
def test_inspect_scores_the_answer_and_keeps_the_reasoning_on_request(
    thinker, tmp_path, include_reasoning
):
    client, _ = thinker
    api = InspectAPIFromBiosSampling(
        model_name="thinker",
        renderer_name="qwen3",
        sampling_client=client,
        include_reasoning=include_reasoning,
    )
    task = Task(dataset=[Sample(input=QUESTION, target="Paris")], scorer=exact())
    with preserved_terminal():
        [log] = eval(
            task,
            model=Model(api, GenerateConfig(max_tokens=16)),
            log_dir=str(tmp_path),
            display="none",
        )
    assert log.status == "success"
    assert log.results.scores[0].metrics["mean"].value == 1.0  # exact() saw "Paris" alone
    message = log.samples[0].output.message
    assert message.text == "Paris"
    reasoning = [part for part in message.content if isinstance(part, ContentReasoning)]
    if include_reasoning:
        assert [part.reasoning for part in reasoning] == ["The capital of France."]
    else:
        assert message.content == "Paris"


def test_inline_inspect_evaluator_passes_include_reasoning_on(thinker, tmp_path):
    from inspect_ai.log import read_eval_log

    from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder

    client, _ = thinker
    task = Task(name="capital", dataset=[Sample(input=QUESTION, target="Paris")], scorer=exact())
    builder = InspectEvaluatorBuilder(
        tasks=[task], renderer_name="qwen3", max_tokens=16, log_dir=tmp_path, include_reasoning=True
    )
    evaluator = builder()
    with preserved_terminal():
        metrics = asyncio.run(evaluator(client))

    assert evaluator.name == "capital" and metrics["exact/mean"] == 1.0
    [log_file] = (tmp_path / "inspect_logs").glob("*.eval")
    message = read_eval_log(str(log_file)).samples[0].output.message
    assert [part.reasoning for part in message.content if isinstance(part, ContentReasoning)] == [
        "The capital of France."
    ]
