"""Continuous batching: one background thread decodes every pending request together.

Requests join the running batch between decode steps (their prompts are prefilled as a group
and their cache rows appended), and each sequence leaves the batch as soon as it finishes, so
short answers never wait for long ones and new work never waits for the whole batch to drain.

Why not transformers' own `generate_batch`? On these CPU machines it decoded ~2.4x slower than
one padded `generate` call over the same prompts; this engine is measured in `bench/sampling.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from bios_callbacks.kv_cache import BatchCache
from bios_callbacks.prefix_cache import PrefixCache, SharedPrefix
from bios_callbacks.token_sampling import next_tokens
from bios_callbacks.tokenizer_utils import pad_token_id
from bios_callbacks.train_flags import evaluation_mode
from bios_callbacks.types import SampledSequence, SampleResponse, SamplingParams

# Engines still open at interpreter exit are closed first, so no decode thread is left waiting
# while torch tears down its thread pools.
_OPEN_ENGINES: weakref.WeakSet[DecodeEngine] = weakref.WeakSet()
atexit.register(lambda: [engine.close() for engine in list(_OPEN_ENGINES)])

DEFAULT_MAX_BATCH_SIZE = 32
"""Most sequences decoding at once, unless a client says otherwise."""
DEFAULT_MAX_CACHE_TOKENS = 65_536
"""Bound on rows x cached positions (KV-cache memory), unless a client says otherwise."""
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
"""Names `compute_dtype` accepts (or the torch dtypes themselves)."""

_SEED_STRIDE = 0x9E3779B97F4A7C15
_SEED_MASK = (1 << 63) - 1


@dataclass(eq=False)
class Request:
    """One `sample` call: a prompt, how many samples, how to sample, where the answer goes.

    `seed` seeds sample i with `seed + i * stride`: the params' seed, else one drawn by the caller.
    A request with more samples than fit at once joins the batch in waves; `admitted` counts the
    samples already in it. Cancelling `future` drops its rows at the next decode step.
    """

    prompt: list[int]
    num_samples: int
    params: SamplingParams
    max_new_tokens: int
    seed: int = 0
    future: Future = field(default_factory=Future)
    results: list[SampledSequence | None] = field(default_factory=list)
    admitted: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.results = [None] * self.num_samples

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt) + self.max_new_tokens


class _Sequence:
    """The state of one sample while it decodes."""

    def __init__(self, request: Request, index: int, stop_ids: set[int], tokenizer) -> None:
        params = request.params
        self.request, self.index, self.tokenizer = request, index, tokenizer
        self.stop_ids = stop_ids | set(params.stop_token_ids())
        self.stop_strings = params.stop_strings()
        self.window = max((len(s) for s in self.stop_strings), default=0) + 2
        seed = (request.seed + index * _SEED_STRIDE) & _SEED_MASK
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []

    def uniform(self) -> float:
        if self.request.params.temperature == 0:
            return 0.0
        return float(torch.rand((), generator=self.generator))

    def push(self, token: int, logprob: float) -> bool:
        """Records a token; returns True when the sequence is finished."""
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if token in self.stop_ids or self._ends_with_stop_string():
            self._finish("stop")
        elif len(self.tokens) >= self.request.max_new_tokens:
            self._finish("length")
        else:
            return False
        return True

    def _ends_with_stop_string(self) -> bool:
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(self.tokens[-self.window :], skip_special_tokens=False)
        return any(s in tail for s in self.stop_strings)

    def _finish(self, reason: str) -> None:
        request = self.request
        request.results[self.index] = SampledSequence(self.tokens, self.logprobs, reason)
        if all(r is not None for r in request.results):
            _settle(request.future, SampleResponse(sequences=list(request.results)))


class _Batch:
    """Rows decoding together: their cache, attention mask, next inputs and sampling settings."""

    def __init__(self, seqs: list[_Sequence], cache: BatchCache, mask: torch.Tensor) -> None:
        self.seqs, self.cache, self.mask = seqs, cache, mask
        self.positions = mask.sum(dim=1)
        self.next_input = torch.zeros_like(self.positions)
        params = [s.request.params for s in seqs]
        device = mask.device
        self.temperature = torch.tensor([p.temperature for p in params], device=device)
        self.top_k = torch.tensor([p.top_k for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)

    def __len__(self) -> int:
        return len(self.seqs)

    def longest_reservation(self) -> int:
        return max((s.request.reserved_tokens for s in self.seqs), default=0)

    def drop_abandoned(self) -> None:
        """Drops the rows of requests already resolved: cancelled by their caller, or failed."""
        rows = [row for row, seq in enumerate(self.seqs) if not seq.request.future.done()]
        if len(rows) < len(self):
            self.keep(rows)

    def keep(self, rows: list[int]) -> None:
        """Keeps only `rows`, then drops leading cache positions that are padding in all of them."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.seqs = [self.seqs[i] for i in rows]
        self.cache.select_rows(index)
        for name in ("mask", "positions", "next_input", "temperature", "top_k", "top_p"):
            setattr(self, name, getattr(self, name)[index])
        padding = int(self.mask.any(dim=0).int().argmax())
        self.cache.trim_left(padding)
        self.mask = self.mask[:, padding:]

    def extend(self, other: _Batch, headroom: int) -> None:
        """Appends the rows of `other`, left-padding the shorter cache."""
        self.cache.append_rows(other.cache, headroom)
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.seqs += other.seqs
        for name in ("positions", "next_input", "temperature", "top_k", "top_p"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (width - mask.shape[1], 0))


class DecodeEngine:
    """Owns the decode thread for one model. Thread-safe `submit`; results arrive on futures.

    Args:
        model: a transformers causal LM (its weights are used in place, never copied).
        tokenizer: its tokenizer (for stop strings and padding).
        max_batch_size: most sequences decoding at once.
        max_cache_tokens: bound on rows x cached positions, which bounds KV-cache memory.
        max_prefill_tokens: bound on padded prompt tokens prefilled in one forward pass.
        compute_dtype: if set, decode under autocast to this dtype: a torch dtype or its name,
            one of `COMPUTE_DTYPES` (e.g. `torch.bfloat16` or "bfloat16"); the weights stay as
            they are and their cast copies are reused for a whole busy period.
        admit_window_s: when idle, how long to wait for more requests before starting, so that
            requests issued together (e.g. by `asyncio.gather`) start as one batch.
        prefix_caching: prefill a prompt prefix shared by recent requests (a system prompt,
            few-shot examples) once, and only the rest of each prompt (see `prefix_cache`).
            Always off for sliding-window models.

    Failures: an error in one prefill or decode step fails the requests in it; any other
    error in the decode thread fails every request taken or queued, with a RuntimeError naming
    it, and the thread goes on serving. A request whose future is cancelled leaves the batch at
    the next step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_cache_tokens: int = DEFAULT_MAX_CACHE_TOKENS,
        max_prefill_tokens: int = 8_192,
        compute_dtype: torch.dtype | str | None = None,
        admit_window_s: float = 0.005,
        prefix_caching: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: expected at least 1.")
        if max_cache_tokens < 1:
            raise ValueError(f"max_cache_tokens={max_cache_tokens}: expected at least 1.")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = max_batch_size
        self.max_cache_tokens = max_cache_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.admit_window_s = admit_window_s
        self.compute_dtype = _as_compute_dtype(compute_dtype)
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self.vocab_size: int = model.get_input_embeddings().num_embeddings
        self._stop_ids = _eos_ids(model, tokenizer)
        self._pad_id = pad_token_id(tokenizer)
        forward_args = inspect.signature(_base_model(model).forward).parameters
        self._cache_arg = "cache" if "cache" in forward_args else "past_key_values"
        self._trim_logits = "logits_to_keep" in forward_args
        caching = prefix_caching and not _uses_sliding_window(text_config)
        self._prefixes = PrefixCache(self._encode_prefix) if caching else None
        self._queue: deque[Request] = deque()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._held: list[Request] = []  # taken off the queue by the decode thread, not resolved
        self._dead: BaseException | None = None  # why the decode thread stopped, if it did
        _OPEN_ENGINES.add(self)
        self._idle = threading.Event()
        self._idle.set()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def submit(self, request: Request) -> Future:
        """Queues a validated request; its future resolves to a `SampleResponse`.

        Raises ValueError if one of its samples can never fit `max_cache_tokens`, and
        RuntimeError if the engine is closed or its decode thread has stopped.
        """
        if request.reserved_tokens > self.max_cache_tokens:
            raise ValueError(
                f"One sample needs {len(request.prompt)} prompt + {request.max_new_tokens} new "
                f"tokens = {request.reserved_tokens} cache positions, more than "
                f"max_cache_tokens={self.max_cache_tokens}: create the client with "
                f"max_cache_tokens >= {request.reserved_tokens}, or lower "
                "SamplingParams.max_tokens or shorten the prompt."
            )
        with self._wakeup:
            if self._closed:
                raise RuntimeError("This sampling client is closed; create a new one.")
            if self._dead is not None or (self._thread and not self._thread.is_alive()):
                cause = repr(self._dead) if self._dead is not None else "cause unknown"
                raise RuntimeError(
                    f"The sampling engine's decode thread stopped ({cause}); create a new "
                    "sampling client."
                ) from self._dead
            self._queue.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bios-decode", daemon=True)
                self._thread.start()
            self._wakeup.notify()
        return request.future

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Waits until nothing is decoding and the model's training flags are restored."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        """Stops the decode thread after the current step; pending requests are cancelled."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # The decode thread.

    def _run(self) -> None:
        try:
            while self._serve_busy_period():
                pass
        except BaseException as error:  # the loop itself broke: refuse new work from now on
            with self._wakeup:
                self._dead = error
            self._fail_pending(error, "the engine stopped; create a new sampling client")
            self._idle.set()

    def _serve_busy_period(self) -> bool:
        """Waits for work and serves until nothing is left; returns False once closed.

        An unexpected error fails every request taken or queued, and serving goes on.
        """
        with self._wakeup:
            while not self._queue and not self._closed:
                self._wakeup.wait()
            if self._closed:
                for request in self._queue:
                    request.future.cancel()
                return False
            self._idle.clear()
        try:
            time.sleep(self.admit_window_s)
            if self._prefixes is not None:  # a live model's weights change while we are idle
                self._prefixes.check_weights(self.model)
            with torch.no_grad(), evaluation_mode(self.model), self._autocast():
                self._serve_until_idle()
        except Exception as error:
            self._fail_pending(error, "new requests are served again")
        finally:
            self._idle.set()
        return True

    def _fail_pending(self, error: BaseException, outlook: str) -> None:
        """Fails the requests the decode thread holds and those queued, naming `error`."""
        with self._wakeup:
            pending = [*self._held, *self._queue]
            self._held = []
            self._queue.clear()
        failure = RuntimeError(
            f"sampling engine failed: {type(error).__name__}: {error}. The requests in flight "
            f"were failed; {outlook}."
        )
        failure.__cause__ = error
        _fail(pending, failure)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _serve_until_idle(self) -> None:
        batch: _Batch | None = None
        while True:
            if batch is not None:
                batch.drop_abandoned()
            batch = self._admit(batch)
            if batch is None:
                with self._wakeup:
                    if not self._queue or self._closed:
                        return
                continue
            if self._closed:
                error = RuntimeError("The sampling client was closed mid-request.")
                _fail([s.request for s in batch.seqs], error)
                return
            try:
                self._decode_step(batch)
            except Exception as error:  # a failed step fails its requests, not the engine
                _fail([s.request for s in batch.seqs], error)
                batch = None

    def _admit(self, batch: _Batch | None) -> _Batch | None:
        """Moves queued samples that fit into the batch, prefilling them in groups.

        Samples join in queue order while rows and cache allow; a request that does not fit
        whole joins in waves, its later samples as rows free up. Returns the batch, or None when
        nothing is decoding.
        """
        if batch is not None and not len(batch):
            batch = None  # a fresh batch rather than new rows padded to a finished one's width
        if batch is not None and not self._queue:
            return batch  # nothing waiting: the usual step
        rows = len(batch) if batch else 0
        longest = batch.longest_reservation() if batch else 0
        parts: list[_Part] = []
        with self._wakeup:
            while self._queue and not self._closed:
                request = self._queue[0]
                if request.future.done():  # cancelled, or failed, while it waited
                    self._queue.popleft()
                    continue
                new_longest = max(longest, request.reserved_tokens)
                room = min(self.max_batch_size, self.max_cache_tokens // new_longest) - rows
                if room < 1:
                    break
                count = min(room, request.num_samples - request.admitted)
                parts.append((request, range(request.admitted, request.admitted + count)))
                request.admitted += count
                rows, longest = rows + count, new_longest
                if request.admitted < request.num_samples:
                    break  # the rest of its samples wait for rows to free up
                self._queue.popleft()
            held = [r for r in self._held if not r.future.done()]
            self._held = held + [r for r, _ in parts if r not in held]
        for chunk in self._prefill_chunks(parts):
            try:
                admitted = self._prefill(chunk)
            except Exception as error:  # e.g. out of memory: fail these requests only
                _fail([request for request, _ in chunk], error)
                continue
            if batch is None:
                batch = admitted
            elif len(admitted):
                batch.extend(admitted, headroom=longest)
        return batch if batch is not None and len(batch) else None

    def _prefill_chunks(self, parts: list[_Part]) -> list[list[_Part]]:
        chunks: list[list[_Part]] = []
        for part in parts:
            if chunks:
                chunk = chunks[-1]
                width = max(len(part[0].prompt), *(len(r.prompt) for r, _ in chunk))
                if (len(chunk) + 1) * width <= self.max_prefill_tokens:
                    chunk.append(part)
                    continue
            chunks.append([part])
        return chunks

    def _prefill(self, parts: list[_Part]) -> _Batch:
        """Runs the prompts through the model (after a cached shared prefix, if any)."""
        device = self.device
        prompts = [request.prompt for request, _ in parts]
        prefix = self._prefixes.find(prompts) if self._prefixes is not None else None
        start = len(prefix.tokens) if prefix is not None else 0
        width = max(len(p) for p in prompts) - start
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            rest = prompt[start:]
            ids[row, width - len(rest) :] = torch.tensor(rest)
            mask[row, width - len(rest) :] = 1
        ids, mask = ids.to(device), mask.to(device)
        if prefix is None:
            cache = BatchCache()
        else:  # rows hold [prefix][padding][rest of the prompt]; the mask skips the padding
            cache = prefix.cache_for(len(prompts), headroom=width)
            mask = torch.cat([mask.new_ones(len(prompts), start), mask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, start:]
        logits = self._forward(ids, mask, positions, cache, prefill=True)

        if any(len(samples) > 1 for _, samples in parts):
            repeats = torch.tensor([len(samples) for _, samples in parts], device=device)
            index = torch.repeat_interleave(torch.arange(len(parts), device=device), repeats)
            cache.select_rows(index)
            mask, logits = mask[index], logits[index]
        seqs = [
            _Sequence(request, i, self._stop_ids, self.tokenizer)
            for request, samples in parts
            for i in samples
        ]
        batch = _Batch(seqs, cache, mask)
        self._advance(batch, logits)
        return batch

    def _encode_prefix(self, tokens: list[int]) -> SharedPrefix:
        ids = torch.tensor([tokens], device=self.device)
        cache = BatchCache()
        positions = torch.arange(len(tokens), device=self.device)[None]
        self._forward(ids, torch.ones_like(ids), positions, cache, prefill=True)
        return SharedPrefix(
            tuple(tokens),
            tuple(layer.keys for layer in cache.layers),
            tuple(layer.values for layer in cache.layers),
        )

    def _decode_step(self, batch: _Batch) -> None:
        mask = torch.nn.functional.pad(batch.mask, (0, 1), value=1)
        logits = self._forward(
            batch.next_input[:, None], mask, batch.positions[:, None], batch.cache, prefill=False
        )
        batch.mask = mask
        batch.positions = batch.positions + 1
        self._advance(batch, logits)

    def _forward(self, ids, mask, positions, cache: BatchCache, *, prefill: bool) -> torch.Tensor:
        kwargs = {self._cache_arg: cache}
        if prefill and self._trim_logits:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
        )
        return out.logits[:, -1]

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Samples each row's next token, records it, and lets finished rows leave."""
        if all(s.request.params.temperature == 0 for s in batch.seqs):
            uniform = None
        else:
            uniform = torch.tensor([s.uniform() for s in batch.seqs], device=logits.device)
        tokens, logprobs = next_tokens(logits, batch.temperature, batch.top_k, batch.top_p, uniform)
        batch.next_input = tokens
        pushed = zip(batch.seqs, tokens.tolist(), logprobs.tolist(), strict=True)
        keep = [
            row for row, (seq, token, logprob) in enumerate(pushed) if not seq.push(token, logprob)
        ]
        if len(keep) < len(batch):
            batch.keep(keep)


_Part = tuple[Request, range]
"""A request and the indices of its samples joining the batch now."""


def _settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Resolves `future` unless it is done already (its caller may cancel it at any moment)."""
    if future.done():
        return
    with contextlib.suppress(InvalidStateError):  # cancelled since the check
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _fail(requests: list[Request], error: BaseException) -> None:
    for request in requests:
        _settle(request.future, error=error)


def _as_compute_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """`value` (a torch dtype or its name) as a torch dtype; None stays None."""
    if value is None:
        return None
    name = str(value).removeprefix("torch.")  # str(torch.bfloat16) == "torch.bfloat16"
    if name not in COMPUTE_DTYPES:
        raise ValueError(
            f"compute_dtype={value!r}: expected a torch dtype or its name, one of "
            f"{list(COMPUTE_DTYPES)}, e.g. compute_dtype='bfloat16'."
        )
    return getattr(torch, name)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper, if any."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _uses_sliding_window(config) -> bool:
    """Sliding windows count cache columns, so they would count the padding between a cached
    prefix and the rest of a prompt as tokens."""
    window = getattr(config, "sliding_window", None)
    return bool(window) and getattr(config, "use_sliding_window", True) is not False


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    eos = getattr(generation_config, "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids
