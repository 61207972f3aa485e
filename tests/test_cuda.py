"""The sampling client and EvalCallback on a CUDA device (skipped where there is none).

CI has no GPU; these run on a machine that has one (`pytest -m cuda`). References come from
the same weights on the CPU, compared with tolerances rather than exact tokens, because the two
devices round differently.
"""

from __future__ import annotations

import asyncio
import functools

import pytest
import torch
from lit_tiny import TinyLM, make_trainer, steps, token_loader

from bios_callbacks import types
from bios_callbacks.callback import EvalCallback
from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
from bios_callbacks.sampling.client import SamplingClient

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture
def cuda_model(tiny_model):
    torch.backends.cuda.matmul.allow_tf32 = False
    return tiny_model.to("cuda")


def _prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode("word " * (1 + 3 * (i % 4)) + str(i)) for i in range(count)]


async def _gather(client, prompts, params):
    return await asyncio.gather(*(client.sample_async(p, 1, params) for p in prompts))


def test_greedy_tokens_are_the_cpu_models_argmax(cuda_model, tokenizer):
    prompts = _prompts(tokenizer, 8)
    params = types.SamplingParams(max_tokens=10, temperature=0.0)
    with SamplingClient.from_module(cuda_model, tokenizer) as client:
        responses = asyncio.run(_gather(client, prompts, params))
    cpu_model = cuda_model.to("cpu")
    for prompt, response in zip(prompts, responses, strict=True):
        seq = response.sequences[0]
        with torch.no_grad():
            logits = cpu_model(torch.tensor([prompt + seq.tokens])).logits[0, len(prompt) - 1 : -1]
        chosen = logits.gather(1, torch.tensor(seq.tokens)[:, None])[:, 0]
        # Each token is the CPU model's best choice, up to rounding between the devices.
        assert bool((chosen >= logits.max(dim=-1).values - 1e-3).all())
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(seq.tokens)[:, None])
        torch.testing.assert_close(torch.tensor(seq.logprobs), expected[:, 0], atol=1e-3, rtol=1e-3)


def test_seeded_sampling_reproduces_on_cuda(cuda_model, tokenizer):
    prompt = _prompts(tokenizer, 1)[0]
    seeded = types.SamplingParams(max_tokens=8, temperature=1.0, seed=5)
    with SamplingClient.from_module(cuda_model, tokenizer) as client:
        first = [s.tokens for s in client.sample(prompt, 3, seeded).sequences]
        again = [s.tokens for s in client.sample(prompt, 3, seeded).sequences]
    assert first == again
    assert len({tuple(t) for t in first}) == 3


def test_bfloat16_autocast_decodes_on_cuda(cuda_model, tokenizer):
    seen: list[torch.dtype] = []
    cuda_model.lm_head.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    params = types.SamplingParams(max_tokens=6, temperature=0.0)
    with SamplingClient.from_module(cuda_model, tokenizer, compute_dtype=torch.bfloat16) as client:
        seq = client.sample(_prompts(tokenizer, 1)[0], 1, params).sequences[0]
    assert len(seq.tokens) == 6 and seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in cuda_model.parameters())


def test_eval_callback_on_a_gpu_trainer(tmp_path, tiny_model, tokenizer):
    questions = [{"input": "What is the capital of France?", "target": "Paris"}] * 4
    builders = [
        lambda: QAEvaluator(questions, lambda r, t: t in r, renderer_name="chatml", max_tokens=4),
        functools.partial(NLLEvaluator, [[1, 2, 3, 4]]),
    ]
    eval_devices: set[str] = set()
    tiny_model.lm_head.register_forward_hook(
        lambda m, a, out: None if torch.is_grad_enabled() else eval_devices.add(out.device.type)
    )
    module = TinyLM(tiny_model, tokenizer)
    trainer = make_trainer(
        tmp_path, [EvalCallback(builders, eval_every=2)], max_steps=4, accelerator="gpu"
    )
    trainer.fit(module, token_loader())
    assert steps(trainer.log_dir, "eval/qa/accuracy") == [0, 2, 4]
    assert steps(trainer.log_dir, "eval/nll/loss") == [0, 2, 4]
    assert eval_devices == {"cuda"}  # evaluators ran on the training device
    assert module.model.training
