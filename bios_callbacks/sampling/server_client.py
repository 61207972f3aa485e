"""Sampling from a serving engine's OpenAI-compatible endpoint: llama.cpp, vLLM, SGLang.

`ServerSamplingClient` has the local `SamplingClient`'s interface (`sample_async`, `sample`,
`tokenizer`, `max_batch_size`, `progress`, `wait_idle`, `close`), so evaluators, the Inspect
bridge and the CLIs use it unchanged. Prompts go to `/v1/completions` as token ids; replies are
streamed so every sampled token arrives with its id and logprob, stop sequences included.

Requests run on one background event loop with a bounded pool of HTTP connections (httpx), at
most `max_batch_size` in flight (llama.cpp: its parallel slots). 429, 5xx, refused and reset
connections are retried with exponential backoff; after that an error names the server.

Example:
    >>> import bios_callbacks as bios
    >>> client = bios.ServiceClient(base_url="http://127.0.0.1:8000/v1").create_sampling_client(
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> prompt = bios.types.ModelInput.from_ints(client.tokenizer.encode("2+2="))  # doctest: +SKIP
    >>> client.sample(prompt, 1, bios.types.SamplingParams(max_tokens=4, temperature=0))
    ... # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import threading
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE
from bios_callbacks.sampling.request import checked_inputs
from bios_callbacks.types import ModelInput, SampledSequence, SampleResponse, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")

START_HINT = "start one with `make serve` (llama.cpp on the embedded model), or check base_url="
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_RETRY_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
_SEED_STRIDE = 0x9E3779B1
_SEED_RANGE = 2**31 - 1  # every engine accepts a non-negative int32 seed
# Server kinds by `owned_by` in /v1/models.
_KINDS = {"llamacpp": "llama.cpp", "vllm": "vllm", "sglang": "sglang"}


class ServerError(RuntimeError):
    """The server failed a request after all retries (5xx, 429, resets)."""


@dataclass(frozen=True)
class ServerInfo:
    """What `/v1/models` (and llama.cpp's `/props`) say about a server."""

    kind: str
    """"llama.cpp", "vllm", "sglang" or "openai" (anything else)."""
    models: tuple[str, ...]
    context_length: int | None = None
    """Prompt + reply tokens one sequence may hold, where the server says."""
    slots: int | None = None
    """Sequences decoded in parallel, where the server says (llama.cpp)."""
    vocab_size: int | None = None


@dataclass
class _Reply:
    """One streamed choice as it arrives."""

    texts: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ids_missing: bool = False
    finish_reason: str | None = None


class ServerSamplingClient:
    """Samples from a model on a serving engine, with the local `SamplingClient`'s interface.

    Make one with `bios.ServiceClient(base_url=...).create_sampling_client(base_model=...)`.
    Creating it asks the server which models it serves, so a wrong URL or model name fails here.

    Args:
        base_url: the server's OpenAI-compatible root, e.g. `http://127.0.0.1:8000/v1`
            (`/v1` is added when the URL has no path).
        model: the name to request (one of the server's `/v1/models`); default: its only model.
        tokenizer_name: the tokenizer to load for `.tokenizer` (default: `model`).
        api_key: sent as `Authorization: Bearer <api_key>` (vLLM's `--api-key`).
        max_batch_size: most samples in flight at once (default 64), at most the server's
            parallel slots where it says (llama.cpp).
        timeout_s: connect timeout, and the longest wait for the next streamed token.
        max_retries: retries of a request after 429, 5xx, refused or reset connections.
        backoff_s: first retry delay; it doubles per retry (a `Retry-After` header wins).

    Example:
        >>> client = ServerSamplingClient("http://127.0.0.1:8000/v1")  # doctest: +SKIP
        >>> client.info.kind, client.max_batch_size                    # doctest: +SKIP
        ('llama.cpp', 16)
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        tokenizer_name: str | None = None,
        api_key: str | None = None,
        max_batch_size: int | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size!r}: expected a positive integer.")
        self.base_url = _normalize_url(base_url)
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = _LoopThread()
        self._counts_lock = threading.Lock()
        self._requested = self._finished = 0
        self._warned: set[str] = set()
        self._tokenizer: Any = None
        try:
            self._http = self._loop.run(self._open_http(max_batch_size or 256))
            self.info = self._loop.run(self._discover())
        except BaseException:
            self.close()
            raise
        self.model_name = self._pick_model(model)
        self._tokenizer_name = tokenizer_name or self.model_name
        slots = self.info.slots  # more in flight than slots would only queue on the server
        wanted = max_batch_size or slots or DEFAULT_MAX_BATCH_SIZE
        self._max_batch_size = min(wanted, slots) if slots else wanted
        self._in_flight = self._loop.run(_make_semaphore(self._max_batch_size))

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (`get_tokenizer(tokenizer_name)`), loaded on first use."""
        if self._tokenizer is None:
            from bios_callbacks.tokenizer_utils import get_tokenizer

            self._tokenizer = get_tokenizer(self._tokenizer_name)
        return self._tokenizer

    @property
    def max_batch_size(self) -> int:
        """Most samples in flight at once (integrations size their concurrency by it)."""
        return self._max_batch_size

    async def sample_async(
        self,
        prompt: ModelInput | Sequence[int],
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> SampleResponse:
        """Generates `num_samples` continuations of `prompt` on the server.

        Each sample is one streamed request (sample i seeded with `seed + i * stride`), so
        they spread over the server's slots; greedy requests are sent once and repeated.
        Cancelling the call cancels its HTTP requests.
        """
        coroutine = self._sample(*self._check(prompt, num_samples, sampling_params))
        return await asyncio.wrap_future(self._submit(coroutine, num_samples))

    def sample(
        self,
        prompt: ModelInput | Sequence[int],
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> SampleResponse:
        """Blocking version of `sample_async`."""
        coroutine = self._sample(*self._check(prompt, num_samples, sampling_params))
        return self._submit(coroutine, num_samples).result()

    def progress(self) -> tuple[int, int]:
        """`(finished, requested)`: samples over this client's life, for progress output.

        Example:
            >>> finished, requested = client.progress()  # doctest: +SKIP
        """
        with self._counts_lock:
            return self._finished, self._requested

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Always True at once: the server holds no weights of a local model to restore."""
        return True

    def close(self) -> None:
        """Cancels requests in flight, closes the connections and stops the event loop."""
        http, self._http = getattr(self, "_http", None), None
        self._loop.close(http.aclose() if http is not None else None)

    def __enter__(self) -> ServerSamplingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ---------------------------------------------------------------------------

    def _check(
        self, prompt: ModelInput | Sequence[int], num_samples: int, params: SamplingParams | None
    ) -> tuple[list[int], int, SamplingParams, int]:
        tokens, params, max_new = checked_inputs(
            prompt,
            num_samples,
            params,
            vocab_size=self.info.vocab_size,
            context_length=self.info.context_length,
            context_fix=(
                "shorten the prompt, or give the server more context per sequence "
                "(llama-server --ctx-size = slots x tokens per slot; vllm --max-model-len)"
            ),
        )
        return tokens, num_samples, params, max_new

    def _submit(self, coroutine: Coroutine[Any, Any, T], num_samples: int) -> Future[T]:
        future = self._loop.submit(coroutine)
        with self._counts_lock:
            self._requested += num_samples

        def finished(_: Future) -> None:
            with self._counts_lock:
                self._finished += num_samples

        future.add_done_callback(finished)
        return future

    async def _sample(
        self, tokens: list[int], num_samples: int, params: SamplingParams, max_new: int
    ) -> SampleResponse:
        if params.temperature == 0:  # greedy: every sample is the same sequence
            one = await self._sample_one(tokens, params, max_new, seed=None)
            copies = [SampledSequence(list(one.tokens), list(one.logprobs), one.stop_reason)]
            copies += [
                SampledSequence(list(one.tokens), list(one.logprobs), one.stop_reason)
                for _ in range(num_samples - 1)
            ]
            return SampleResponse(sequences=copies)
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        seeds = [(seed + i * _SEED_STRIDE) % _SEED_RANGE for i in range(num_samples)]
        sequences = await asyncio.gather(
            *(self._sample_one(tokens, params, max_new, seed=s) for s in seeds)
        )
        return SampleResponse(sequences=list(sequences))

    async def _sample_one(
        self, tokens: list[int], params: SamplingParams, max_new: int, seed: int | None
    ) -> SampledSequence:
        body = self._body(tokens, params, max_new, seed)
        async with self._in_flight:
            for attempt in range(self.max_retries + 1):
                last = attempt == self.max_retries
                try:
                    reply, usage = await self._stream(body)
                except httpx.ConnectError as error:
                    if last:
                        raise ConnectionError(
                            f"No server answers at {self.base_url} ({error}); {START_HINT}."
                        ) from error
                    delay = self._delay(attempt, None)
                except httpx.TimeoutException as error:
                    raise TimeoutError(
                        f"{self.base_url} sent nothing for {self.timeout_s:.0f} s "
                        f"({type(error).__name__}); pass a larger timeout_s= or send fewer "
                        "requests at once (max_batch_size=)."
                    ) from error
                except _RETRY_ERRORS as error:
                    if last:
                        raise ServerError(
                            f"The connection to {self.base_url} failed {attempt + 1} times "
                            f"({type(error).__name__}: {error})."
                        ) from error
                    delay = self._delay(attempt, None)
                except _Retryable as error:
                    if last:
                        raise ServerError(
                            f"{self.base_url} answered HTTP {error.status} {attempt + 1} times: "
                            f"{error.message}"
                        ) from None
                    delay = self._delay(attempt, error.retry_after)
                else:
                    return self._sequence(reply, usage, params, max_new)
                logger.debug("retrying %s in %.1f s (attempt %d)", self.base_url, delay, attempt)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 60.0)
        return self.backoff_s * 2**attempt * random.uniform(0.8, 1.2)

    def _body(
        self, tokens: list[int], params: SamplingParams, max_new: int, seed: int | None
    ) -> dict[str, Any]:
        kind = self.info.kind
        stop = params.stop_strings()
        stop_ids = params.stop_token_ids()
        body: dict[str, Any] = {
            "model": self.model_name,
            "prompt": tokens,
            "max_tokens": max_new,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
            "logprobs": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if seed is not None:
            body["seed"] = seed
        top_k = params.top_k if params.top_k > 0 else None
        if kind == "llama.cpp":
            # Exactly our sampler: top-k, temperature, top-p (no min-p or other defaults);
            # logprobs of the distribution sampled from (the model's own when greedy).
            body["top_k"] = top_k or 0
            body["samplers"] = ["top_k", "temperature", "top_p"]
            body["post_sampling_probs"] = params.temperature > 0
            # It has no stop-token-id option: stop on their text (EOG tokens stop anyway).
            stop = stop + [s for s in self._token_texts(stop_ids) if s not in stop]
        elif kind in ("vllm", "sglang"):
            body["top_k"] = top_k or -1
            body["skip_special_tokens"] = False
            if stop_ids:
                body["stop_token_ids"] = stop_ids
            if kind == "vllm":
                body["return_tokens_as_token_ids"] = True
                body["include_stop_str_in_output"] = True
            else:
                body["no_stop_trim"] = True
        elif top_k is not None:
            body["top_k"] = top_k
        if stop:
            body["stop"] = stop
        return body

    def _token_texts(self, ids: list[int]) -> list[str]:
        texts = [self.tokenizer.decode([i]) for i in ids] if ids else []
        return [t for t in texts if t]

    async def _stream(self, body: dict[str, Any]) -> tuple[_Reply, dict[str, Any] | None]:
        assert self._http is not None, "the client is closed"
        reply, usage = _Reply(), None
        url = f"{self.base_url}/completions"
        async with self._http.stream("POST", url, json=body, headers=self._headers) as response:
            if response.status_code != 200:
                await response.aread()
                self._raise_for(response)
            async with contextlib.aclosing(response.aiter_lines()) as lines:
                async for line in lines:
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise ServerError(f"{self.base_url} failed the request: {chunk['error']}")
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or ():
                        _accumulate(reply, choice)
        return reply, usage

    def _raise_for(self, response: httpx.Response) -> None:
        message = _error_message(response)
        if response.status_code in _RETRY_STATUS:
            retry_after = response.headers.get("retry-after")
            seconds = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise _Retryable(response.status_code, message, seconds)
        hint = ""
        if response.status_code == 404 and "model" in message.lower():
            hint = f" The server serves {list(self.info.models)}."
        raise ValueError(
            f"{self.base_url} refused the request (HTTP {response.status_code}): {message}.{hint}"
        )

    def _sequence(
        self, reply: _Reply, usage: dict[str, Any] | None, params: SamplingParams, max_new: int
    ) -> SampledSequence:
        if reply.finish_reason is None:
            raise ServerError(f"{self.base_url} ended the stream without a finish_reason.")
        reported = (usage or {}).get("completion_tokens")
        if reply.ids_missing or (isinstance(reported, int) and reported > len(reply.ids)):
            tokens, logprobs = self._retokenize(reply, params)
        else:
            tokens, logprobs = reply.ids, reply.logprobs
        reason = "length" if reply.finish_reason == "length" else "stop"
        stop_ids = set(params.stop_token_ids())
        for i, token in enumerate(tokens):
            if token in stop_ids:  # the server may not know stop token ids: cut here
                tokens, logprobs, reason = tokens[: i + 1], logprobs[: i + 1], "stop"
                break
        if len(tokens) > max_new:
            tokens, logprobs, reason = tokens[:max_new], logprobs[:max_new], "length"
        return SampledSequence(list(tokens), list(logprobs), reason)

    def _retokenize(self, reply: _Reply, params: SamplingParams) -> tuple[list[int], list[float]]:
        """Tokens from the reply's text when the server did not send every token id."""
        if "retokenize" not in self._warned:
            self._warned.add("retokenize")
            logger.warning(
                "%s (%s) did not return the id of every sampled token; those replies are "
                "re-tokenized from their text (the ids may differ from the sampled ones) and "
                "their logprobs are NaN unless the counts match.",
                self.base_url,
                self.info.kind,
            )
        text = "".join(reply.texts)
        stop = params.stop_strings()
        if reply.finish_reason == "stop" and stop and not any(s in text[-64:] for s in stop):
            # The server withheld the stop string from the text; it is the one the ids show.
            tail = self.tokenizer.decode(reply.ids[-16:], skip_special_tokens=False)
            text += next((s for s in stop if s in tail), "")
        tokens = self.tokenizer.encode(text, add_special_tokens=False)
        if len(reply.logprobs) == len(tokens):
            return tokens, reply.logprobs
        return tokens, [math.nan] * len(tokens)

    # -- discovery ---------------------------------------------------------------------------

    async def _open_http(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        timeout = httpx.Timeout(self.timeout_s, pool=None)
        return httpx.AsyncClient(limits=limits, timeout=timeout)

    async def _discover(self) -> ServerInfo:
        listing = await self._get_json(f"{self.base_url}/models")
        entries = listing.get("data") or []
        models = tuple(str(e.get("id")) for e in entries)
        owner = str(entries[0].get("owned_by", "")) if entries else ""
        kind = _KINDS.get(owner.lower(), "openai")
        first = entries[0] if entries else {}
        context = first.get("max_model_len")
        vocab = slots = None
        if kind == "llama.cpp":
            meta = first.get("meta") or {}
            context, vocab = meta.get("n_ctx"), meta.get("n_vocab")
            root = self.base_url.removesuffix("/v1")
            props = await self._get_json(f"{root}/props")
            slots = props.get("total_slots")
            context = (props.get("default_generation_settings") or {}).get("n_ctx", context)
        return ServerInfo(kind, models, _int_or_none(context), _int_or_none(slots), vocab)

    async def _get_json(self, url: str) -> dict[str, Any]:
        assert self._http is not None
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = await self._http.get(url, headers=self._headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                if last:
                    raise ConnectionError(
                        f"No server answers at {self.base_url} ({error}); {START_HINT}."
                    ) from error
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in _RETRY_STATUS and not last:  # e.g. 503 while loading
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code != 200:
                raise ConnectionError(
                    f"{url} answered HTTP {response.status_code}: {_error_message(response)}; "
                    f"is {self.base_url} an OpenAI-compatible server? {START_HINT}."
                )
            return response.json()
        raise AssertionError("unreachable")

    def _pick_model(self, model: str | None) -> str:
        served = list(self.info.models)
        if model is None:
            if len(served) != 1:
                raise ValueError(
                    f"{self.base_url} serves {served}: pass base_model= (or model_path=) to say "
                    "which one to sample."
                )
            return served[0]
        if model in served or not served:
            return model
        same_dir = [name for name in served if _same_directory(name, model)]
        if same_dir:  # e.g. `vllm serve runs/x/checkpoints/final` asked for by absolute path
            return same_dir[0]
        raise ValueError(
            f"{self.base_url} does not serve {model!r}; it serves {served}. Pass one of "
            "those, or start the server under that name (llama-server --alias, "
            "vllm serve --served-model-name)."
        )


class _Retryable(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def _accumulate(reply: _Reply, choice: dict[str, Any]) -> None:
    """Adds one streamed choice delta (text, token ids and logprobs) to `reply`."""
    text = choice.get("text") or ""
    if text:
        reply.texts.append(text)
    reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
    logprobs = choice.get("logprobs")
    if not logprobs:
        reply.ids_missing |= bool(text)
        return
    if "content" in logprobs:  # llama.cpp: [{"id", "logprob" | "prob", ...}]
        for entry in logprobs["content"] or ():
            if not isinstance(entry.get("id"), int):
                reply.ids_missing = True
                continue
            reply.ids.append(entry["id"])
            if "logprob" in entry:
                reply.logprobs.append(float(entry["logprob"]))
            else:
                prob = float(entry.get("prob", 0.0))
                reply.logprobs.append(math.log(prob) if prob > 0 else -math.inf)
        return
    # The legacy completions format (vLLM, SGLang): parallel "tokens" / "token_logprobs".
    for token, logprob in zip(
        logprobs.get("tokens") or (), logprobs.get("token_logprobs") or (), strict=False
    ):
        if isinstance(token, str) and token.startswith("token_id:"):
            reply.ids.append(int(token.removeprefix("token_id:")))
        else:
            reply.ids_missing = True
        reply.logprobs.append(math.nan if logprob is None else float(logprob))


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _normalize_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"base_url={base_url!r}: expected an http(s) URL such as "
            "'http://127.0.0.1:8000/v1' (`make serve` starts a server there)."
        )
    url = base_url.rstrip("/")
    return url if parts.path.strip("/") else f"{url}/v1"


def _same_directory(a: str, b: str) -> bool:
    """Whether two model names are paths of the same existing directory."""
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.is_dir() and second.is_dir() and first.resolve() == second.resolve()


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


async def _make_semaphore(size: int) -> asyncio.Semaphore:
    return asyncio.Semaphore(size)


class _LoopThread:
    """An event loop on a daemon thread: the HTTP client lives there, whatever loop calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="bios-server-client", daemon=True
        )
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Schedules `coroutine` on the loop; cancelling the future cancels it."""
        if self.loop.is_closed():
            coroutine.close()
            raise RuntimeError("The sampling client is closed; create a new one.")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs `coroutine` on the loop and waits for its result."""
        return self.submit(coroutine).result()

    def close(self, last: Coroutine[Any, Any, Any] | None = None) -> None:
        """Cancels what still runs, runs `last` (e.g. closing connections), stops the loop."""
        if self.loop.is_closed():
            if last is not None:
                last.close()
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if last is not None:
                await last
            await self.loop.shutdown_asyncgens()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
