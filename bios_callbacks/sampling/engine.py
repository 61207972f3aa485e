"""Continuous batching: one background thread decodes every pending request together.

Requests join the running batch between decode steps (their prompts are prefilled as a group
and their cache rows appended), and each sequence leaves the batch as soon as it finishes, so
short answers never wait for long ones and new work never waits for the whole batch to drain.
The `Scheduler` decides who joins, the `ModelRunner` runs the model; this module owns the
thread, the queue's lock and what happens when something fails.

Why not transformers' own `generate_batch`? On these CPU machines it decoded at about half the
speed of one padded `generate` call over the same prompts (0.52x, `bench/sampling.py`).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from concurrent.futures import Future

import torch

from bios_callbacks.sampling.defaults import (
    COMPUTE_DTYPES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_CACHE_TOKENS,
    DEFAULT_MAX_PREFILL_TOKENS,
)
from bios_callbacks.sampling.request import Request, fail
from bios_callbacks.sampling.runner import ModelRunner
from bios_callbacks.sampling.scheduler import Scheduler
from bios_callbacks.sampling.stepper import Stepper

# Engines still open at interpreter exit are closed first, so no decode thread is left waiting
# while torch tears down its thread pools.
_OPEN_ENGINES: weakref.WeakSet[DecodeEngine] = weakref.WeakSet()
atexit.register(lambda: [engine.close() for engine in list(_OPEN_ENGINES)])


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
        keep_packed_weights: keep the weights packed for decoding on CPU (`packed_linear`) from
            one burst of requests to the next, for a model that does not train meanwhile: one
            extra copy of its linear weights until `close()`, and no repacking per burst
            (0.4 s for SmolLM2-135M). Off, they are freed when the engine goes idle.

    Failures: an error in one prefill or decode step fails the requests in it; any other
    error in the decode thread fails every request taken or queued, with a RuntimeError naming
    it, and the thread goes on serving. A request whose future is cancelled leaves the batch at
    the next step.

    Example:
        >>> engine = DecodeEngine(model, tokenizer, compute_dtype="bfloat16")  # doctest: +SKIP
        >>> engine.submit(request).result()                                  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_cache_tokens: int = DEFAULT_MAX_CACHE_TOKENS,
        max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS,
        compute_dtype: torch.dtype | str | None = None,
        admit_window_s: float = 0.005,
        prefix_caching: bool = True,
        keep_packed_weights: bool = False,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size}: expected at least 1.")
        if max_cache_tokens < 1:
            raise ValueError(f"max_cache_tokens={max_cache_tokens}: expected at least 1.")
        self.compute_dtype = _as_compute_dtype(compute_dtype)
        self.runner = ModelRunner(
            model, tokenizer, compute_dtype=self.compute_dtype, prefix_caching=prefix_caching
        )
        self.runner.keep_packs = keep_packed_weights
        self.scheduler = Scheduler(
            max_batch_size=max_batch_size,
            max_cache_tokens=max_cache_tokens,
            max_prefill_tokens=max_prefill_tokens,
        )
        self._wakeup = threading.Condition()  # guards the scheduler's queue
        self.stepper = Stepper(self.runner, self.scheduler, self._wakeup)
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_cache_tokens = max_batch_size, max_cache_tokens
        self.context_length = self.runner.context_length
        self.vocab_size = self.runner.vocab_size
        self.admit_window_s = admit_window_s
        self._thread: threading.Thread | None = None
        self._closed = False
        self._dead: BaseException | None = None  # why the decode thread stopped, if it did
        _OPEN_ENGINES.add(self)
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, request: Request) -> Future:
        """Queues a validated request; its future resolves to a `SampleResponse`.

        Raises ValueError if one of its samples can never fit `max_cache_tokens`, and
        RuntimeError if the engine is closed or its decode thread has stopped.
        """
        check_fits(request, self.max_cache_tokens)
        with self._wakeup:
            if self._closed:
                raise RuntimeError("This sampling client is closed; create a new one.")
            if self._dead is not None or (self._thread and not self._thread.is_alive()):
                cause = repr(self._dead) if self._dead is not None else "cause unknown"
                raise RuntimeError(
                    f"The sampling engine's decode thread stopped ({cause}); create a new "
                    "sampling client."
                ) from self._dead
            self.scheduler.add(request)
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
        self.runner.release()

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
            while not self.scheduler.queue and not self._closed:
                self._wakeup.wait()
            if self._closed:
                for request in self.scheduler.queue:
                    request.future.cancel()
                return False
            self._idle.clear()
        try:
            time.sleep(self.admit_window_s)
            with self.runner.serving():
                self._serve_until_idle()
        except Exception as error:
            self._fail_pending(error, "new requests are served again")
        finally:
            self._idle.set()
        return True

    def _fail_pending(self, error: BaseException, outlook: str) -> None:
        """Fails the requests the decode thread holds and those queued, naming `error`."""
        with self._wakeup:
            pending = self.scheduler.take_pending()
        failure = RuntimeError(
            f"sampling engine failed: {type(error).__name__}: {error}. The requests in flight "
            f"were failed; {outlook}."
        )
        failure.__cause__ = error
        fail(pending, failure)
        self.stepper.clear()

    def _serve_until_idle(self) -> None:
        while self.stepper.step():
            if self._closed:
                error = RuntimeError("The sampling client was closed mid-request.")
                fail(self.stepper.requests(), error)
                self.stepper.clear()
                return


def check_fits(request: Request, max_cache_tokens: int) -> None:
    """A ValueError naming the fix when one sample of `request` can never fit the cache."""
    if request.reserved_tokens > max_cache_tokens:
        raise ValueError(
            f"One sample needs {len(request.prompt)} prompt + {request.max_new_tokens} new "
            f"tokens = {request.reserved_tokens} cache positions, more than "
            f"max_cache_tokens={max_cache_tokens}: create the client with "
            f"max_cache_tokens >= {request.reserved_tokens}, or lower "
            "SamplingParams.max_tokens or shorten the prompt."
        )


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
