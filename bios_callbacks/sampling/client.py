"""Generation from a model's current weights, with concurrent requests batched together."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Future

import torch

from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_CACHE_TOKENS
from bios_callbacks.sampling.engine import DecodeEngine
from bios_callbacks.sampling.request import Request, checked_inputs
from bios_callbacks.types import ModelInput, SampleResponse, SamplingParams


class SamplingClient:
    """Samples from a causal LM. Concurrent `sample_async` calls decode as one batch.

    Make one over a live torch module with `SamplingClient.from_module` (it shares the
    module's weights, so it always samples the current ones), or over a saved model with
    `ServiceClient().create_sampling_client(...)`.

    Example:
        >>> client = SamplingClient.from_module(model, tokenizer)          # doctest: +SKIP
        >>> prompt = types.ModelInput.from_ints(tokenizer.encode("2+2="))  # doctest: +SKIP
        >>> params = types.SamplingParams(max_tokens=4, temperature=0)     # doctest: +SKIP
        >>> responses = await asyncio.gather(                              # doctest: +SKIP
        ...     *(client.sample_async(prompt=prompt, num_samples=1, sampling_params=params)
        ...       for _ in range(16)))
    """

    def __init__(self, engine: DecodeEngine, *, model_name: str | None = None) -> None:
        self._engine = engine
        self.model_name = model_name
        self._counts_lock = threading.Lock()
        self._requested = self._finished = 0

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        tokenizer,
        *,
        model_name: str | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_cache_tokens: int = DEFAULT_MAX_CACHE_TOKENS,
        compute_dtype: torch.dtype | str | None = None,
        prefix_caching: bool = True,
        keep_packed_weights: bool = False,
    ) -> SamplingClient:
        """A client over a live transformers causal LM, sharing its weights (no copy).

        While it decodes, the module is in eval mode under `torch.no_grad()`; every
        submodule's training flag is restored when the client goes idle.

        Args:
            model: the causal LM (a transformers model, optionally wrapped by peft).
            tokenizer: its tokenizer.
            model_name: a name reported by integrations (e.g. Inspect logs).
            max_batch_size: most sequences decoding at once.
            max_cache_tokens: bound on sequences x cached positions (KV-cache memory).
            compute_dtype: decode under autocast to this dtype, a torch dtype or its name
                ("bfloat16", "float16", "float32"), e.g. `torch.bfloat16`; the module's own
                weights are not changed, so each product converts them (on the CPUs measured,
                0.3-0.9x of float32; the README's Performance section). None (default)
                computes in the weights' dtype. Another name is a ValueError.
            prefix_caching: prefill a prompt prefix that recent requests share (a system
                prompt, few-shot examples) once instead of per request. Results are the same
                up to float rounding; turn it off to make each prompt's prefill independent.
            keep_packed_weights: keep the weights packed for CPU decoding between bursts of
                requests, for a model that does not train meanwhile (one extra copy of its
                linear weights until `close()`; `ServiceClient` turns it on for the models it
                loads). Off (default), each burst packs them again (0.4 s for SmolLM2-135M).

        Example:
            >>> client = SamplingClient.from_module(                      # doctest: +SKIP
            ...     model, tokenizer, max_batch_size=128, compute_dtype=torch.bfloat16)
        """
        engine = DecodeEngine(
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            max_cache_tokens=max_cache_tokens,
            compute_dtype=compute_dtype,
            prefix_caching=prefix_caching,
            keep_packed_weights=keep_packed_weights,
        )
        return cls(engine, model_name=model_name)

    @property
    def tokenizer(self):
        """The model's tokenizer."""
        return self._engine.tokenizer

    @property
    def max_batch_size(self) -> int:
        """Most sequences decoded at once (integrations size their concurrency by it)."""
        return self._engine.max_batch_size

    @property
    def model(self) -> torch.nn.Module:
        """The model generating the samples."""
        return self._engine.model

    async def sample_async(
        self,
        prompt: ModelInput | Sequence[int],
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> SampleResponse:
        """Generates `num_samples` continuations of `prompt`.

        Bad input raises here and fails this call only; other requests keep decoding.
        Cancelling the call (or timing it out with `asyncio.wait_for`) frees its rows at the
        next decode step. More samples than `max_batch_size` decode in waves, with the same
        results as in one batch.
        """
        request = self._request(prompt, num_samples, sampling_params)
        return await asyncio.wrap_future(self._submit(request))

    def sample(
        self,
        prompt: ModelInput | Sequence[int],
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> SampleResponse:
        """Blocking version of `sample_async`."""
        request = self._request(prompt, num_samples, sampling_params)
        return self._submit(request).result()

    def progress(self) -> tuple[int, int]:
        """`(finished, requested)`: samples over this client's life, for progress output.

        A sample counts as finished when its request completes, fails or is cancelled.

        Example:
            >>> finished, requested = client.progress()  # doctest: +SKIP
        """
        with self._counts_lock:
            return self._finished, self._requested

    def _submit(self, request: Request) -> Future:
        future = self._engine.submit(request)
        with self._counts_lock:
            self._requested += request.num_samples

        def finished(_: Future) -> None:
            with self._counts_lock:
                self._finished += request.num_samples

        future.add_done_callback(finished)
        return future

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until the decode thread is idle and has restored the model's training flags.

        Call it before training resumes on a shared model. Returns False on timeout.
        """
        return self._engine.wait_idle(timeout)

    def close(self) -> None:
        """Stops the decode thread. The model itself is left untouched."""
        self._engine.close()

    def __enter__(self) -> SamplingClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _request(self, prompt, num_samples: int, params: SamplingParams | None) -> Request:
        tokens, params, max_new = checked_inputs(
            prompt,
            num_samples,
            params,
            vocab_size=self._engine.vocab_size,
            context_length=self._engine.context_length,
        )
        return Request(tokens, num_samples, params, max_new, seed=_request_seed(params))


def _request_seed(params: SamplingParams) -> int:
    """The params' seed, else one from torch's global generator (greedy needs none)."""
    if params.seed is not None:
        return params.seed
    if params.temperature == 0:
        return 0
    return int(torch.randint(0, 2**62, ()))
