"""ServerSamplingClient: sampling through a serving engine's OpenAI-compatible endpoint.

The main tests start the real llama.cpp `llama-server` once per session on the embedded model
and compare it with the local engine over the same weights. The server runs the Q4_1 GGUF with
quantized matmuls while the local engine runs its exact fp32 de-quantization, so greedy
answers agree on short replies but may part after a near tie: the comparisons use prompts where
both engines agree and compare logprobs with a tolerance. They run xllamacpp's embedded
server (the dev extra) unless a native llama-server exists, and skip when neither does.

Retries, resets, timeouts and servers without token ids are tested against a tiny local HTTP
server scripted to fail (no engine there answers 429 or resets on demand).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import bios_callbacks as bios
from bios_callbacks.models import EMBEDDED_MODEL
from bios_callbacks.sampling.server_client import ServerError, ServerSamplingClient
from bios_callbacks.serving.llama_cpp import (
    LlamaServer,
    free_port,
    llama_server_command,
    no_server_message,
)
from bios_callbacks.types import ModelInput, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


# -- a scripted fake server, for failures a real engine does not produce on demand ------------


class Script:
    """What the fake server answers to each POST /v1/completions, in order, then 200s."""

    def __init__(self, steps=(), chunks=None, stall_s=0.0, owned_by="fake"):
        self.steps, self.posts, self.stall_s, self.owned_by = list(steps), 0, stall_s, owned_by
        self.bodies = []
        self.chunks = chunks or [
            {"text": "Hi", "logprobs": {"content": [{"id": 28120, "logprob": -0.5}]}},
            {"text": "!", "logprobs": {"content": [{"id": 17, "logprob": -1.5}]}},
            {"text": "", "finish_reason": "stop"},
        ]


def _handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _json(self, status, payload, headers=()):
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._json(200, {"data": [{"id": EMBEDDED_MODEL, "owned_by": script.owned_by}]})

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            script.bodies.append(json.loads(self.rfile.read(length)))
            script.posts += 1
            step = script.steps.pop(0) if script.steps else 200
            if step == "reset":  # close the connection without an answer
                self.close_connection = True
                return
            if step != 200:
                self._json(step, {"error": {"message": f"scripted {step}"}}, [("Retry-After", "0")])
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            threading.Event().wait(script.stall_s)
            for chunk in script.chunks:
                event = {"choices": [{"index": 0, "finish_reason": None, **chunk}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@pytest.fixture
def fake():
    """`(script, base_url)` of a fake OpenAI-compatible server on a free port."""
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _client(base_url, **options) -> ServerSamplingClient:
    return ServerSamplingClient(base_url, model=EMBEDDED_MODEL, backoff_s=0.01, **options)


def test_429_and_500_are_retried_until_the_server_answers(fake):
    script, url = fake
    script.steps = [429, 500, 503]
    with _client(url) as client:
        response = client.sample([1, 2, 3], 1, GREEDY)
    assert script.posts == 4
    assert response.sequences[0].tokens == [28120, 17]
    assert response.sequences[0].logprobs == [-0.5, -1.5]
    assert response.sequences[0].stop_reason == "stop"


def test_a_reset_connection_is_retried(fake):
    script, url = fake
    script.steps = ["reset"]
    with _client(url) as client:
        assert client.sample([1, 2, 3], 1, GREEDY).sequences[0].tokens == [28120, 17]
    assert script.posts == 2


def test_retries_give_up_with_the_status_and_message(fake):
    script, url = fake
    script.steps = [500, 500, 500]
    with _client(url, max_retries=2) as client, pytest.raises(ServerError, match="HTTP 500"):
        client.sample([1, 2, 3], 1, GREEDY)
    assert script.posts == 3


def test_a_refused_request_is_a_value_error_with_the_servers_message(fake):
    script, url = fake
    script.steps = [400]
    with _client(url) as client, pytest.raises(ValueError, match=r"HTTP 400.*scripted 400"):
        client.sample([1, 2, 3], 1, GREEDY)
    assert script.posts == 1  # client errors are not retried


def test_a_silent_server_times_out_with_the_fix(fake):
    script, url = fake
    script.stall_s = 2.0
    with _client(url, timeout_s=0.3) as client, pytest.raises(TimeoutError, match="timeout_s="):
        client.sample([1, 2, 3], 1, GREEDY)


def test_no_server_names_the_url_and_make_serve():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=r"No server answers at .*make serve"):
        _client(url, max_retries=1)


def test_bad_urls_and_unknown_models_are_named(fake):
    _, url = fake
    with pytest.raises(ValueError, match="base_url='localhost:8000'"):
        ServerSamplingClient("localhost:8000")
    with pytest.raises(ValueError, match=r"does not serve 'other/model'.*SmolLM2"):
        ServerSamplingClient(url, model="other/model")
    with ServerSamplingClient(url.removesuffix("/v1")) as client:  # /v1 added, one model served
        assert client.model_name == EMBEDDED_MODEL
        assert client.base_url == url


def test_a_server_without_token_ids_is_retokenized_with_one_warning(fake, tokenizer, caplog):
    script, url = fake
    script.chunks = [  # the legacy logprobs format with token strings, as most servers send
        {"text": " Paris", "logprobs": {"tokens": [" Paris"], "token_logprobs": [-0.1]}},
        {"text": " is", "logprobs": {"tokens": [" is"], "token_logprobs": [-0.2]}},
        {"text": "", "finish_reason": "length"},
    ]
    with caplog.at_level(logging.WARNING), _client(url) as client:
        first = client.sample([1, 2], 1, GREEDY).sequences[0]
        client.sample([1, 2], 1, GREEDY)
    assert first.tokens == tokenizer.encode(" Paris is", add_special_tokens=False)
    assert first.logprobs == [-0.1, -0.2]
    assert first.stop_reason == "length"
    assert sum("re-tokenized" in r.message for r in caplog.records) == 1


def test_stop_token_ids_cut_the_reply_when_the_server_ignores_them(fake):
    script, url = fake
    params = SamplingParams(max_tokens=12, temperature=0.0, stop=[28120])
    with _client(url) as client:
        sequence = client.sample([1, 2], 1, params).sequences[0]
    assert sequence.tokens == [28120]
    assert sequence.stop_reason == "stop"
    assert script.bodies[0]["prompt"] == [1, 2]  # token ids go as they are


def test_vllm_gets_its_token_id_and_stop_options(fake):
    script, url = fake
    script.owned_by = "vllm"
    script.chunks = [
        {"text": "Hi", "logprobs": {"tokens": ["token_id:28120"], "token_logprobs": [-0.5]}},
        {"text": "", "finish_reason": "stop"},
    ]
    params = SamplingParams(max_tokens=5, temperature=0.5, seed=3, stop=["\n", 2])
    with _client(url) as client:
        sequences = client.sample([1, 2], 2, params).sequences
    assert [s.tokens for s in sequences] == [[28120], [28120]]
    body = script.bodies[0]
    assert body["return_tokens_as_token_ids"] and body["include_stop_str_in_output"]
    assert body["stop_token_ids"] == [2] and body["stop"] == ["\n"] and body["top_k"] == -1
    assert len({b["seed"] for b in script.bodies}) == 2  # one seed per sample


# -- the real llama.cpp server vs the local engine ---------------------------------------------

_NOT_BUILT = pytest.mark.skipif(llama_server_command() is None, reason=no_server_message())


def needs_server(test):
    """Marks a test `serving` and skips it when there is no llama-server nor xllamacpp."""
    return pytest.mark.serving(_NOT_BUILT(test))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The real llama-server on the embedded model, 4 slots, started once per session."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    # One thread: llama.cpp's threads wait for each other at every op, which stalls when the
    # cores are busy (shared test machines: 16 tokens took 21-26 s with two threads, under 1 s
    # with one).
    with LlamaServer(parallel=4, ctx_per_slot=1024, threads=1, log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def remote(llama_server):
    client = bios.ServiceClient(base_url=llama_server.base_url).create_sampling_client(
        base_model=EMBEDDED_MODEL
    )
    yield client
    client.close()


@pytest.fixture(scope="session")
def local(embedded):
    from bios_callbacks.sampling.client import SamplingClient

    model, tokenizer = embedded
    client = SamplingClient.from_module(model, tokenizer)
    yield client
    client.close()


def _chat(tokenizer, question: str) -> ModelInput:
    renderer = bios.renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    return renderer.build_generation_prompt([{"role": "user", "content": question}])


def _both(remote, local, requests):
    """Every `(prompt, params)` on the server, then on the local engine, each all at once
    (one engine at a time: two engines on two shared cores would slow each other down)."""

    async def run(client):
        calls = [client.sample_async(prompt=p, num_samples=1, sampling_params=params)
                 for p, params in requests]  # fmt: skip
        return [response.sequences[0] for response in await asyncio.gather(*calls)]

    return zip(asyncio.run(run(remote)), asyncio.run(run(local)), strict=True)


# Both engines give the same 16-token greedy reply to these; to 3 of 12 questions tried they do
# not (e.g. "What is the capital of France?": "The" -1.88 vs "L" -1.97 here, -2.01 vs -1.92 on
# the server, so the server answers "L'Étoile, ...").
AGREEING_QUESTIONS = [
    "What is 2+2?",
    "What color is the sky?",
    "Translate 'cat' to French.",
    "What is the opposite of hot?",
]
LOGPROB_TOLERANCE = 0.5  # per token; measured gaps are 0.03-0.31, about 0.1 on average


@needs_server
def test_greedy_answers_and_logprobs_match_the_local_engine(remote, local, tokenizer):
    renderer = bios.renderers.get_renderer(name="chatml", tokenizer=tokenizer)
    params = SamplingParams(max_tokens=16, temperature=0.0, stop=renderer.get_stop_sequences())
    requests = [(_chat(tokenizer, question), params) for question in AGREEING_QUESTIONS]
    for question, (server_seq, local_seq) in zip(
        AGREEING_QUESTIONS, _both(remote, local, requests), strict=True
    ):
        assert server_seq.tokens == local_seq.tokens, question
        assert server_seq.stop_reason == local_seq.stop_reason
        assert len(server_seq.logprobs) == len(server_seq.tokens)
        # Q4_1 matmuls on the server vs exact fp32 here: close, not equal.
        gaps = [abs(a - b) for a, b in zip(server_seq.logprobs, local_seq.logprobs, strict=True)]
        assert max(gaps) < LOGPROB_TOLERANCE, (question, gaps)
        assert sum(gaps) / len(gaps) < LOGPROB_TOLERANCE / 2, (question, gaps)


@needs_server
def test_stop_reasons_and_max_tokens_match_the_local_engine(remote, local, tokenizer):
    prompt = _chat(tokenizer, "What is 2+2?")  # "The answer to this ... is 4.<|im_end|>"
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    cases = {
        "stop token": SamplingParams(max_tokens=32, temperature=0.0, stop=[end]),
        "max_tokens": SamplingParams(max_tokens=3, temperature=0.0),
        "stop string": SamplingParams(max_tokens=32, temperature=0.0, stop=[" classic"]),
    }
    results = _both(remote, local, [(prompt, params) for params in cases.values()])
    for name, (server_seq, local_seq) in zip(cases, results, strict=True):
        assert server_seq.tokens == local_seq.tokens, name
        assert server_seq.stop_reason == local_seq.stop_reason, name
        assert len(server_seq.logprobs) == len(server_seq.tokens), name
    assert server_seq.stop_reason == "stop"  # the stop string, kept in the tokens
    assert tokenizer.decode(server_seq.tokens) == "The answer to this classic"


@needs_server
def test_num_samples_are_seeded_and_distinct(remote):
    prompt = remote.tokenizer.encode("Once upon a time")
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    first = remote.sample(prompt, 4, params)
    again = remote.sample(prompt, 4, params)
    assert len(first.sequences) == 4
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert len({tuple(s.tokens) for s in first.sequences}) > 1
    for sequence in first.sequences:
        assert len(sequence.tokens) == len(sequence.logprobs) == 8
        assert sequence.stop_reason == "length"
    greedy = remote.sample(prompt, 3, SamplingParams(max_tokens=5, temperature=0.0))
    assert len({tuple(s.tokens) for s in greedy.sequences}) == 1 and len(greedy.sequences) == 3


@needs_server
def test_sampled_logprobs_are_of_the_distribution_sampled_from(remote, embedded):
    """At temperature 0.7 the server reports log softmax(logits / 0.7), as the local engine
    does (recomputed here with the fp32 model on the server's tokens); with top_k=1 only one
    token is left, so every logprob is 0 and the reply is the greedy one."""
    import torch

    model, tokenizer = embedded
    prompt = tokenizer.encode("The weather today is")
    tempered = remote.sample(prompt, 1, SamplingParams(max_tokens=6, temperature=0.7, seed=1))
    tokens = tempered.sequences[0].tokens
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    expected = (logits / 0.7).log_softmax(-1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
    served = tempered.sequences[0].logprobs
    gaps = [abs(a - b) for a, b in zip(served, expected.tolist(), strict=True)]
    assert max(gaps) < LOGPROB_TOLERANCE, gaps

    top1 = remote.sample(prompt, 1, SamplingParams(max_tokens=6, temperature=1.0, top_k=1))
    greedy = remote.sample(prompt, 1, SamplingParams(max_tokens=6, temperature=0.0))
    assert top1.sequences[0].tokens == greedy.sequences[0].tokens
    assert top1.sequences[0].logprobs == [0.0] * 6


@needs_server
def test_bad_requests_fail_like_the_local_engine(remote, local):
    too_long = [1] * (remote.info.context_length or 0)
    cases = {
        "empty": ([], 1, "empty"),
        "vocabulary": ([1, 10**7], 1, "outside the model's vocabulary"),
        "num_samples": ([1, 2], 0, "num_samples=0"),
    }
    for prompt, n, message in cases.values():
        for client in (remote, local):
            with pytest.raises(ValueError, match=message):
                client.sample(prompt, n, GREEDY)
    with pytest.raises(ValueError, match="context holds"):
        remote.sample(too_long, 1, GREEDY)


@needs_server
def test_concurrent_requests_count_progress_and_cancel(remote, tokenizer):
    prompts = [_chat(tokenizer, f"Count to {n}.") for n in range(8)]
    finished, requested = remote.progress()

    async def run():
        calls = [
            remote.sample_async(prompt=p, num_samples=1, sampling_params=GREEDY) for p in prompts
        ]
        responses = await asyncio.gather(*calls)
        with pytest.raises(asyncio.TimeoutError):  # cancelled while the server decodes it
            long = SamplingParams(max_tokens=1000, temperature=0.0)
            await asyncio.wait_for(remote.sample_async(prompts[0], 1, long), 0.5)
        return responses

    responses = asyncio.run(run())
    assert all(r.sequences[0].tokens for r in responses)
    assert remote.progress() == (finished + 9, requested + 9)
    assert remote.max_batch_size == 4  # the server's slots
    assert remote.wait_idle() is True
    assert remote.sample(prompts[1], 1, GREEDY).sequences[0].tokens == (
        responses[1].sequences[0].tokens
    )


# -- everywhere a sampling client goes: Inspect, its CLI, run_inspect_evals, a judge -------------

QUESTIONS = [("What is 2+2?", "4"), ("What color is the sky?", "blue")]  # answered alike
REPO = Path(__file__).resolve().parent.parent
FIXTURE = "tests/inspect_tasks_fixture.py"


def _questions_task(scorer=None):
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate

    samples = [Sample(input=q, target=a, id=i) for i, (q, a) in enumerate(QUESTIONS)]
    return Task(dataset=MemoryDataset(samples), solver=generate(), scorer=scorer or includes())


@needs_server
def test_inspect_eval_on_the_server_answers_like_the_local_engine(llama_server, local, tmp_path):
    from inspect_ai import eval
    from inspect_ai.model import GenerateConfig, Model

    from bios_callbacks.eval.inspect_runner import preserved_terminal
    from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling

    config = GenerateConfig(max_tokens=16, temperature=0.0)
    served = InspectAPIFromBiosSampling(
        model_name=EMBEDDED_MODEL, base_url=llama_server.base_url, config=config
    )
    ours = InspectAPIFromBiosSampling(
        model_name=EMBEDDED_MODEL, renderer_name="chatml", sampling_client=local
    )
    with preserved_terminal():
        [served_log] = eval(_questions_task(), model=Model(served, config), display="none",
                            log_dir=str(tmp_path))  # fmt: skip
        [local_log] = eval(_questions_task(), model=Model(ours, config), display="none",
                           log_dir=str(tmp_path))  # fmt: skip
    served.close()
    assert served_log.status == local_log.status == "success"
    assert [s.output.completion for s in served_log.samples] == [
        s.output.completion for s in local_log.samples
    ]
    assert "4" in served_log.samples[0].output.completion


@needs_server
def test_a_judge_on_the_server_grades_a_local_policy(remote, local, tmp_path):
    from inspect_ai import eval
    from inspect_ai.model import GenerateConfig, Model
    from inspect_ai.scorer import model_graded_qa

    from bios_callbacks.eval.inspect_runner import preserved_terminal
    from bios_callbacks.eval.inspect_utils import InspectAPIFromBiosSampling

    def api(client):
        return InspectAPIFromBiosSampling(
            model_name=EMBEDDED_MODEL, renderer_name="chatml", sampling_client=client
        )

    judge = Model(api(remote), GenerateConfig(temperature=0.0, max_tokens=24))
    policy = Model(api(local), GenerateConfig(temperature=0.0, max_tokens=16))
    judged_before, policy_before = remote.progress()[1], local.progress()[1]
    with preserved_terminal():
        [log] = eval(
            _questions_task(model_graded_qa(partial_credit=False)),
            model=policy,
            model_roles={"grader": judge},
            display="none",
            log_dir=str(tmp_path),
        )
    assert log.status == "success"
    assert remote.progress()[1] - judged_before == len(QUESTIONS)  # one verdict per answer
    assert local.progress()[1] - policy_before == len(QUESTIONS)
    assert all(s.scores for s in log.samples)


@needs_server
def test_run_inspect_evals_with_base_url(llama_server, tmp_path, capsys):
    from bios_callbacks.eval.run_inspect_evals import main

    status = main(
        [
            f"base_url={llama_server.base_url}",
            f"model_name={EMBEDDED_MODEL}",
            f"tasks={FIXTURE}@echo",
            "limit=2",
            "max_tokens=4",
            f"log_dir={tmp_path}",
        ]
    )
    assert status == 0, capsys.readouterr().out
    record = json.loads((tmp_path / "evals" / "echo.json").read_text())
    assert record["samples"] == 2 and record["renderer_name"] == "chatml"


@needs_server
def test_inspect_cli_with_model_base_url(llama_server, tmp_path):
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    command = [
        *(sys.executable, "-m", "inspect_ai", "eval", f"{FIXTURE}@echo"),
        *("--model", f"bios/{EMBEDDED_MODEL}", "--model-base-url", llama_server.base_url),
        *("--limit", "2", "--max-tokens", "4", "--log-dir", str(tmp_path), "--log-format", "json"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    [log_file] = tmp_path.glob("*.json")
    log = json.loads(log_file.read_text())
    assert log["status"] == "success" and len(log["samples"]) == 2


# -- a saved checkpoint on llama.cpp: converted to GGUF, served, compared ----------------------


@needs_server
def test_a_saved_checkpoint_is_served_after_gguf_conversion(tmp_path, tokenizer):
    pytest.importorskip("sentencepiece", reason="the converter needs the serve extra")
    from tiny import make_tiny_model

    from bios_callbacks.models import save_checkpoint
    from bios_callbacks.sampling.client import SamplingClient
    from bios_callbacks.serving.gguf_convert import checkpoint_to_gguf

    model = make_tiny_model(tokenizer)
    path = save_checkpoint(
        tmp_path / "final", model, tokenizer, base_model=EMBEDDED_MODEL, renderer_name="chatml",
        step=3,
    )  # fmt: skip
    gguf = checkpoint_to_gguf(path, outtype="f32")  # exact weights
    try:
        assert checkpoint_to_gguf(path, outtype="f32") == gguf  # converted once
        prompt = tokenizer.encode("Hello there, how are you?")
        params = SamplingParams(max_tokens=8, temperature=0.0)
        with (
            LlamaServer(gguf, alias=str(path.resolve()), parallel=2, ctx_per_slot=256) as server,
            bios.ServiceClient(base_url=server.base_url).create_sampling_client(
                model_path=str(path)  # the served name is its absolute path: either matches
            ) as remote,
            SamplingClient.from_module(model, tokenizer) as local,
        ):
            served, ours = remote.sample(prompt, 1, params), local.sample(prompt, 1, params)
        assert served.sequences[0].tokens == ours.sequences[0].tokens
    finally:
        gguf.unlink()


def test_the_xllamacpp_launcher_names_a_flag_it_does_not_take():
    launcher = [sys.executable, "-m", "bios_callbacks.serving.xllamacpp_server"]
    unknown = subprocess.run(
        [*launcher, "--model", "m.gguf", "--n-gpu-layers", "9"], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "--n-gpu-layers" in unknown.stderr
    assert "accepts only --model --alias" in unknown.stderr
    bad = subprocess.run([*launcher, "--model", "m.gguf", "--port", "x"], capture_output=True)
    assert bad.returncode == 2 and b"argument --port: expected a TCP port" in bad.stderr


def test_extra_args_xllamacpp_does_not_take_fail_before_starting(monkeypatch):
    monkeypatch.delenv("BIOS_LLAMA_SERVER", raising=False)
    monkeypatch.setattr(
        "bios_callbacks.serving.llama_cpp.llama_server_command",
        lambda: [sys.executable, "-m", "bios_callbacks.serving.xllamacpp_server"],
    )
    with pytest.raises(ValueError, match="--n-gpu-layers need the native binary"):
        LlamaServer(extra_args=["--n-gpu-layers", "9"])
    assert LlamaServer(extra_args=["--threads", "1"]).uses_xllamacpp
