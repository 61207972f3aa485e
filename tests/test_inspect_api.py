"""InspectAPIFromBiosSampling: Inspect messages and settings through a real sampling client."""

from __future__ import annotations

import asyncio

import pytest
import torch
from inspect_ai import Task, eval
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageSystem,
    ChatMessageTool,
    ChatMessageUser,
    ContentReasoning,
    ContentText,
    GenerateConfig,
    Model,
    get_model,
)
from inspect_ai.scorer import includes
from inspect_ai.solver import generate
from renderer_tokenizers import qwen3_tokenizer

from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder
from bios_callbacks.eval.inspect_runner import preserved_terminal
from bios_callbacks.eval.inspect_utils import (
    InspectAPIFromBiosSampling,
    _closed_at_stop_seqs,
    convert_inspect_messages,
)
from bios_callbacks.renderers import (
    ChatMLRenderer,
    get_renderer,
    get_text_content,
    register_renderer,
    unregister_renderer,
)
from bios_callbacks.sampling.client import SamplingClient

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "England": "London",
}


@pytest.fixture(autouse=True)
def _restore_terminal():
    """`eval(display="none")` quiets Rich's global console; later tests need it back."""
    with preserved_terminal():
        yield


class InFlight:
    """A real client, counting how many `sample_async` calls are in flight at once."""

    def __init__(self, client):
        self.client, self.tokenizer, self.now, self.peak = client, client.tokenizer, 0, 0
        self.max_batch_size = client.max_batch_size

    async def sample_async(self, **kwargs):
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            return await self.client.sample_async(**kwargs)
        finally:
            self.now -= 1


@pytest.fixture
def tiny_api(tiny_model, tokenizer):
    client = SamplingClient.from_module(tiny_model, tokenizer)
    yield InspectAPIFromBiosSampling(
        renderer_name="chatml", model_name="tiny", sampling_client=client, verbose=False
    )
    client.close()


def generate_once(api, config, messages=None):
    model = Model(api, GenerateConfig())
    messages = messages or [ChatMessageUser(content="Tell me a story.")]
    return asyncio.run(model.generate(messages, config=config))


def test_messages_of_every_role_go_through_the_renderer():
    messages = [
        ChatMessageSystem(content="Be brief."),
        ChatMessageUser(content="Weather?"),
        ChatMessageAssistant(content="Let me look."),
        ChatMessageTool(content="sunny", function="weather"),
    ]
    assert convert_inspect_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "tool", "content": "sunny", "name": "weather"},
    ]


def test_content_parts_convert_as_tinker_cookbook_converts_them():
    messages = [
        ChatMessageUser(content=[ContentText(text=" Capital of"), ContentText(text="France? ")]),
        ChatMessageAssistant(
            content=[ContentReasoning(reasoning="It is Paris."), ContentText(text="Paris")]
        ),
        ChatMessageUser(content="  And of Italy?\n"),
    ]
    assert convert_inspect_messages(messages) == [
        {"role": "user", "content": "Capital of France?"},  # parts joined by a space, stripped
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "It is Paris."},
                {"type": "text", "text": "Paris"},
            ],
        },
        {"role": "user", "content": "And of Italy?"},
    ]


def test_max_tokens_num_choices_and_usage(tiny_api):
    output = generate_once(
        tiny_api, GenerateConfig(max_tokens=5, num_choices=3, temperature=1.0, seed=3)
    )
    assert len(output.choices) == 3
    assert all(c.stop_reason == "max_tokens" for c in output.choices)
    prompt = tiny_api.renderer.build_generation_prompt(
        [{"role": "user", "content": "Tell me a story."}]
    )
    assert output.usage.input_tokens == prompt.length
    assert output.usage.output_tokens == 15
    assert output.usage.total_tokens == prompt.length + 15


def test_seed_and_greedy_are_reproducible(tiny_api):
    sampled = [
        generate_once(
            tiny_api, GenerateConfig(max_tokens=6, temperature=1.0, seed=7, top_k=50, top_p=0.9)
        ).completion
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    other = generate_once(
        tiny_api, GenerateConfig(max_tokens=6, temperature=1.0, seed=8, top_k=50, top_p=0.9)
    ).completion
    assert other != sampled[0]  # the seed reaches the sampler
    greedy = generate_once(tiny_api, GenerateConfig(max_tokens=6))
    assert greedy.completion == generate_once(tiny_api, GenerateConfig(max_tokens=6)).completion


def test_stop_seqs_end_generation_and_are_removed(tiny_api):
    free = generate_once(tiny_api, GenerateConfig(max_tokens=12))
    word = free.completion.split()[1]
    stopped = generate_once(tiny_api, GenerateConfig(max_tokens=12, stop_seqs=[word]))
    assert stopped.stop_reason == "stop"
    assert word not in stopped.completion
    assert free.completion.startswith(stopped.completion)


class BracketingChatML(ChatMLRenderer):
    """A renderer written as tinker-cookbook users write them: `parse_response(self, response)`
    and nothing more; this one brackets the reply so the test can see it parsed."""

    def parse_response(self, response):
        message, termination = super().parse_response(response)
        return {**message, "content": f"[{message['content']}]"}, termination


def test_a_ported_renderer_parses_replies_cut_at_stop_seqs(tiny_model, tokenizer):
    register_renderer("acme/bracketing", lambda tok, _: BracketingChatML(tok))
    client = SamplingClient.from_module(tiny_model, tokenizer)
    try:
        api = InspectAPIFromBiosSampling(
            renderer_name="acme/bracketing", model_name="tiny", sampling_client=client
        )
        free = generate_once(api, GenerateConfig(max_tokens=12)).completion
        word = free.strip("[]").split()[1]
        stopped = generate_once(api, GenerateConfig(max_tokens=12, stop_seqs=[word]))
    finally:
        unregister_renderer("acme/bracketing")
        client.close()
    assert stopped.stop_reason == "stop"
    assert stopped.completion.startswith("[") and stopped.completion.endswith("]")
    assert word not in stopped.completion
    assert free.startswith(stopped.completion[:-1].rstrip())


@pytest.mark.parametrize(
    ("renderer_name", "reply", "ended", "stop", "content"),
    [
        ("chatml", "Paris", True, "end", "Paris"),  # only the end marker's own text holds it
        ("chatml", "I print <|im_end|> here. Q: x", False, "Q:", "I print <|im_end|> here. "),
        ("role_colon", " Paris\nQuestion: next", False, "\nQuestion:", "Paris"),
        ("qwen3", "<think>\nhm\n</think>\n\nParis. Q: next", False, "Q:", "Paris. "),
    ],
    ids=["stop-in-the-end-marker", "marker-text-written", "string-marker", "qwen3-thinking"],
)
def test_stop_seqs_cut_a_reply_before_the_renderer_parses_it(
    tokenizer, renderer_name, reply, ended, stop, content
):
    """How the bridge reads a sampled reply given the task's stop_seqs: its text before the
    end marker is cut at the first stop string (marker text the model wrote stays text)."""
    tok = qwen3_tokenizer(tokenizer) if renderer_name == "qwen3" else tokenizer
    renderer = get_renderer(renderer_name, tok)
    tokens = renderer.encode_text(reply) + (renderer.get_stop_sequences() if ended else [])
    message, termination = renderer.parse_response(
        _closed_at_stop_seqs(renderer, tok, tokens, [stop])
    )
    assert termination == "stop"
    assert get_text_content(message) == content
    if renderer_name == "qwen3":
        assert message["content"][0] == {"type": "thinking", "thinking": "hm"}


def test_logprobs_come_back_per_token(tiny_api):
    output = generate_once(tiny_api, GenerateConfig(max_tokens=4, logprobs=True))
    logprobs = output.choices[0].logprobs.content
    prompt = tiny_api.renderer.build_generation_prompt(
        [{"role": "user", "content": "Tell me a story."}]
    )
    seq = tiny_api.sampling_client.sample(
        prompt, 1, tiny_api.sampling_params(GenerateConfig(max_tokens=4))
    ).sequences[0]
    assert [lp.logprob for lp in logprobs] == pytest.approx(seq.logprobs)
    assert [lp.token for lp in logprobs] == [tiny_api.tokenizer.decode([t]) for t in seq.tokens]


def test_samples_reach_the_client_together(tiny_model, tokenizer, tmp_path):
    client = SamplingClient.from_module(tiny_model, tokenizer)
    counting = InFlight(client)
    api = InspectAPIFromBiosSampling(
        renderer_name="chatml", model_name="tiny", sampling_client=counting
    )
    task = Task(
        dataset=MemoryDataset([Sample(input=f"Count to {i}") for i in range(12)]),
        solver=generate(),
        config=GenerateConfig(max_tokens=4),
    )
    [log] = eval(
        task,
        model=Model(api, GenerateConfig(max_connections=32)),
        log_dir=str(tmp_path),
        display="none",
    )
    client.close()
    assert log.status == "success"
    assert counting.peak == 12


def test_default_concurrency_is_the_clients_batch_size(tiny_model, tokenizer, tmp_path):
    client = SamplingClient.from_module(tiny_model, tokenizer, max_batch_size=5)
    counting = InFlight(client)
    api = InspectAPIFromBiosSampling(
        renderer_name="chatml", model_name="tiny", sampling_client=counting
    )
    task = Task(
        dataset=MemoryDataset([Sample(input=f"Count to {i}") for i in range(12)]),
        solver=generate(),
        config=GenerateConfig(max_tokens=4),
    )
    config = GenerateConfig(adaptive_connections=False)  # else Inspect sizes it adaptively
    [log] = eval(task, model=Model(api, config), log_dir=str(tmp_path), display="none")
    client.close()
    assert log.status == "success"
    assert counting.peak == 5


def test_an_inline_round_keeps_the_clients_batch_in_flight(tiny_model, tokenizer, tmp_path):
    task = Task(
        dataset=MemoryDataset([Sample(input=f"Count to {i}", target="1") for i in range(8)]),
        solver=generate(),
        scorer=includes(),
    )
    builder = InspectEvaluatorBuilder(
        tasks=[task], renderer_name="chatml", max_tokens=4, log_dir=tmp_path
    )
    with SamplingClient.from_module(tiny_model, tokenizer, max_batch_size=3) as client:
        counting = InFlight(client)
        with preserved_terminal():
            metrics = asyncio.run(builder()(counting))
    assert "includes/accuracy" in metrics
    assert counting.peak == 3  # the client's batch, neither more nor fewer
    with pytest.raises(ValueError, match="max_connections=0"):
        InspectEvaluatorBuilder(tasks=[task], renderer_name="chatml", max_connections=0)


def test_unknown_model_argument_names_the_valid_ones(tiny_model, tokenizer):
    client = SamplingClient.from_module(tiny_model, tokenizer)
    with pytest.raises(TypeError, match="renderer_name"):
        InspectAPIFromBiosSampling(model_name="tiny", sampling_client=client, renderer="chatml")
    client.close()


def test_bios_provider_loads_a_checkpoint_by_path(tiny_model, tokenizer, tmp_path):
    from bios_callbacks.checkpoints import save_checkpoint

    path = save_checkpoint(
        tmp_path / "ckpt",
        tiny_model,
        tokenizer,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        renderer_name="chatml",
        step=3,
    )
    model = get_model(f"bios/{path}", memoize=False)
    try:
        assert model.api.renderer_name == "chatml"  # from the checkpoint's metadata
        output = asyncio.run(model.generate("Hi", config=GenerateConfig(max_tokens=3)))
        assert output.usage.output_tokens == 3
    finally:
        model.api.close()

    # Inspect's max_connections sizes the batch; -M dtype= picks the weights' dtype
    model = get_model(
        f"bios/{path}", config=GenerateConfig(max_connections=5), dtype="bfloat16", memoize=False
    )
    try:
        assert model.api.sampling_client.max_batch_size == 5
        assert next(model.api.sampling_client.model.parameters()).dtype == torch.bfloat16
    finally:
        model.api.close()


def test_response_prefix_is_prefilled_and_returned(tiny_model, tokenizer):
    client = SamplingClient.from_module(tiny_model, tokenizer)
    api = InspectAPIFromBiosSampling(
        renderer_name="chatml", model_name="tiny", sampling_client=client, response_prefix="GRADE:"
    )
    output = generate_once(api, GenerateConfig(max_tokens=3))
    prompt = api.renderer.build_generation_prompt([{"role": "user", "content": "Tell me a story."}])
    prefix = tokenizer.encode("GRADE:", add_special_tokens=False)
    continued = client.sample(
        prompt.from_ints(prompt.to_ints() + prefix),
        1,
        api.sampling_params(GenerateConfig(max_tokens=3)),
    ).sequences[0]
    client.close()
    # the model continues after the prefix, and the reply includes it
    assert (
        output.completion == "GRADE:" + api.renderer.parse_response(continued.tokens)[0]["content"]
    )
    assert output.usage.input_tokens == prompt.length + len(prefix)


@pytest.mark.parametrize("form", ["bios/{path}", "bios{path}"], ids=["bios//abs", "bios/abs"])
def test_absolute_checkpoint_path_with_or_without_its_leading_slash(
    form, tiny_model, tokenizer, tmp_path
):
    from bios_callbacks.checkpoints import save_checkpoint

    path = save_checkpoint(
        tmp_path / "ckpt",
        tiny_model,
        tokenizer,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        renderer_name="chatml",
        step=3,
    ).resolve()
    model = form.format(path=path)  # bios//tmp/.../ckpt or bios/tmp/.../ckpt
    task = Task(
        dataset=MemoryDataset([Sample(input=f"Say {i}", target="x") for i in range(2)]),
        solver=generate(),
        scorer=includes(),
        config=GenerateConfig(max_tokens=2),
    )
    [log] = eval(task, model=model, log_dir=str(tmp_path / "logs"), display="none")
    assert log.status == "success", log.error
    assert log.eval.model == model
    assert log.results.scores[0].scored_samples == 2


def test_a_path_that_exists_neither_way_shows_the_forms_that_work():
    with pytest.raises(
        FileNotFoundError,
        match=r"no model or checkpoint directory "
        r"'no/such/ckpt' .* or '/no/such/ckpt'\. .*--model bios/<absolute path> "
        r"\(with or without its leading /\)",
    ):
        get_model("bios/no/such/ckpt", memoize=False)


@pytest.mark.embedded
def test_embedded_model_knows_capitals(embedded, tmp_path):
    model, tokenizer = embedded
    client = SamplingClient.from_module(model, tokenizer)
    api = InspectAPIFromBiosSampling(
        renderer_name="chatml",
        model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        sampling_client=client,
    )
    task = Task(
        dataset=MemoryDataset(
            [
                Sample(input=f"What is the capital of {c}?", target=city)
                for c, city in CAPITALS.items()
            ]
        ),
        solver=generate(),
        scorer=includes(),
        config=GenerateConfig(max_tokens=48),
    )
    [log] = eval(
        task,
        model=Model(api, GenerateConfig(max_connections=32)),
        log_dir=str(tmp_path),
        display="none",
    )
    client.close()
    accuracy = log.results.scores[0].metrics["accuracy"].value
    assert accuracy >= 0.5, [s.output.completion for s in log.samples]


@pytest.mark.embedded
def test_llm_as_judge_example_grades_every_sample(tmp_path, capsys):
    from inspect_ai.log import read_eval_log

    from examples import llm_as_judge

    assert llm_as_judge.main([f"log_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    # the 135M model answers France right and Italy wrong; the prefilled grader says so
    assert "France? -> 'The capital of France is Paris.' (target Paris): C\n" in out
    assert "(target Rome): I\n" in out
    assert "llm_as_judge/model_graded_qa/scored: 2\n" in out
    assert "llm_as_judge/model_graded_qa/unscored: 0\n" in out
    assert "llm_as_judge/model_graded_qa/accuracy: 0.5\n" in out
    [path] = tmp_path.glob("*.eval")
    log = read_eval_log(str(path))
    grader_calls = [
        e for s in log.samples for e in s.events if e.event == "model" and e.role == "grader"
    ]
    assert len(grader_calls) == 2
    assert all(
        e.config.max_tokens == 4 and e.output.completion.startswith("GRADE: ") for e in grader_calls
    )
