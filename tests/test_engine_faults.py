"""The decode engine under faults and cancellation: nothing hangs, and it serves again after."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bios_callbacks import types
from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.runner import Batch

GREEDY = types.SamplingParams(max_tokens=8, temperature=0.0)
BOUND_S = 60.0  # generous: a regression fails the test instead of hanging it


class InjectedFault(RuntimeError):
    """The error the tests make the engine raise."""


class ThreadKiller(BaseException):
    """Escapes `except Exception`, so it ends the decode thread's loop."""


def raise_once(original: Callable, error: BaseException) -> Callable:
    """`original`, except that its first call raises `error`."""
    fired: list[bool] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append(True)
            raise error
        return original(*args, **kwargs)

    return wrapper


class DecodeGate:
    """A forward hook that records the rows of every decode step and holds the decode thread
    at its first one until `release` is set."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.rows: list[int] = []
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        rows, width = kwargs["input_ids"].shape
        if width != 1:  # a prefill (the test prompts have several tokens)
            return
        self.rows.append(rows)
        if not self.reached.is_set():
            self.reached.set()
            self.release.wait(BOUND_S)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, BOUND_S), "never started decoding"

    def remove(self) -> None:
        self.release.set()
        self._handle.remove()


def _prompt(tokenizer, text: str = "word word word 1") -> list[int]:
    return tokenizer.encode(text)


async def _sample(client: SamplingClient, prompt, num_samples: int = 1, params=GREEDY):
    return await asyncio.wait_for(client.sample_async(prompt, num_samples, params), BOUND_S)


@pytest.mark.parametrize("where", ["runner.serving", "stepper._admit", "stop-string check"])
def test_a_fault_fails_the_request_naming_it_and_the_engine_serves_again(
    tiny_model, tokenizer, monkeypatch, where
):
    tiny_model.train()
    prompt = _prompt(tokenizer)
    params = types.SamplingParams(max_tokens=8, temperature=0.0, stop="never-seen-stop")
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        expected = client.sample(prompt, 1, params).sequences[0].tokens
        assert client.wait_idle(BOUND_S)  # the next request starts a busy period
        fault = InjectedFault(f"injected fault in {where}")
        if where == "stop-string check":
            monkeypatch.setattr(tokenizer, "decode", raise_once(tokenizer.decode, fault))
        else:
            owner, name = client._engine, where
            if "." in where:
                part, name = where.split(".")
                owner = getattr(owner, part)
            monkeypatch.setattr(owner, name, raise_once(getattr(owner, name), fault))

        with pytest.raises(Exception, match=f"injected fault in {where}"):
            asyncio.run(_sample(client, prompt, 2, params))
        assert client.wait_idle(BOUND_S)
        assert tiny_model.training  # the training flags were restored
        again = asyncio.run(_sample(client, prompt, 2, params))
    assert [s.tokens for s in again.sequences] == [expected, expected]


def test_a_fault_joining_a_running_batch_fails_both_and_names_it(
    tiny_model, tokenizer, monkeypatch
):
    first, second = _prompt(tokenizer), _prompt(tokenizer, "other words here 2")
    long = types.SamplingParams(max_tokens=100, temperature=0.0)
    monkeypatch.setattr(Batch, "extend", raise_once(Batch.extend, InjectedFault("join broke")))
    gate = DecodeGate(tiny_model)

    async def join_while_decoding():
        running = asyncio.ensure_future(_sample(client, first, 1, long))
        await gate.wait_reached()
        joining = asyncio.ensure_future(client.sample_async(second, 1, GREEDY))
        await asyncio.sleep(0)  # `joining` has submitted its request
        gate.release.set()
        both = asyncio.gather(running, joining, return_exceptions=True)
        return await asyncio.wait_for(both, BOUND_S)

    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        results = asyncio.run(join_while_decoding())
        gate.remove()
        for error in results:
            assert isinstance(error, RuntimeError)
            assert "sampling engine failed: InjectedFault: join broke" in str(error)
            assert isinstance(error.__cause__, InjectedFault)
        assert len(asyncio.run(_sample(client, second)).sequences[0].tokens) == 8


def test_a_stopped_decode_thread_refuses_new_requests_at_once(tiny_model, tokenizer, monkeypatch):
    prompt = _prompt(tokenizer)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        engine = client._engine
        monkeypatch.setattr(
            engine.stepper, "_admit", raise_once(engine.stepper._admit, ThreadKiller("boom"))
        )
        with pytest.raises(RuntimeError, match="ThreadKiller: boom"):
            asyncio.run(_sample(client, prompt))
        with pytest.raises(RuntimeError, match=r"decode thread stopped \(ThreadKiller"):
            asyncio.run(_sample(client, prompt))
        assert client.wait_idle(BOUND_S)


@pytest.mark.parametrize("how", ["task.cancel", "asyncio.wait_for timeout"])
def test_a_cancelled_request_leaves_the_batch_at_the_next_step(tiny_model, tokenizer, how):
    cancelled, kept = _prompt(tokenizer), _prompt(tokenizer, "other words here 2")
    long = types.SamplingParams(max_tokens=300, temperature=0.0)
    short = types.SamplingParams(max_tokens=20, temperature=0.0)
    with SamplingClient.from_module(tiny_model, tokenizer) as client:
        expected = client.sample(kept, 1, short).sequences[0].tokens
        gate = DecodeGate(tiny_model)

        async def cancel_mid_decode():
            other = asyncio.ensure_future(client.sample_async(kept, 1, short))
            if how == "task.cancel":
                task = asyncio.ensure_future(client.sample_async(cancelled, 2, long))
                await gate.wait_reached()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:  # an evaluator timing out while the engine is held at its first step
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client.sample_async(cancelled, 2, long), 1.0)
            gate.release.set()
            return await asyncio.wait_for(other, BOUND_S)

        response = asyncio.run(cancel_mid_decode())
        assert client.wait_idle(BOUND_S)
        gate.remove()
    assert response.sequences[0].tokens == expected
    # After the step it was cancelled in, only the other request's row decodes, and the
    # engine goes idle when that one is done instead of decoding 300 tokens for nobody.
    assert set(gate.rows[1:]) <= {1}
    assert len(gate.rows) <= short.max_tokens


def test_compute_dtype_accepts_a_name_and_rejects_a_bad_one(tiny_model, tokenizer):
    prompt = _prompt(tokenizer)
    with SamplingClient.from_module(tiny_model, tokenizer, compute_dtype="bfloat16") as client:
        assert client._engine.compute_dtype == torch.bfloat16
        response = asyncio.run(_sample(client, prompt, 2))
    assert [len(s.tokens) for s in response.sequences] == [8, 8]
    with pytest.raises(ValueError, match=r"compute_dtype='bf17'.*'bfloat16', 'float16'"):
        SamplingClient.from_module(tiny_model, tokenizer, compute_dtype="bf17")
