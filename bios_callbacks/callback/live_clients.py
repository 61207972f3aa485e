"""Sampling and training clients over the model a LightningModule is training.

The protocol a LightningModule follows so `EvalCallback` can evaluate it:

1. It holds a transformers causal LM as ``self.model`` and its tokenizer as
   ``self.tokenizer``: nothing more to write. The callback makes the clients and closes them
   when the fit ends.
2. Otherwise it defines ``make_sampling_client()`` (for `SamplingClientEvaluator`) and/or
   ``make_training_client()`` (for `TrainingClientEvaluator`), returning clients that share
   the live weights. Each is called when a round first needs that client; the module owns
   what it returns (the callback never closes it), so it may hand out a client it also uses
   itself, as the RL trainer does for its rollouts.

Example:
    >>> class MyModule(L.LightningModule):                      # doctest: +SKIP
    ...     def make_sampling_client(self):
    ...         return SamplingClient.from_module(self.net.lm, self.tok)
    ...     def make_training_client(self):
    ...         return TrainingClient.from_module(self.net.lm, self.tok)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

PROTOCOL_HELP = (
    "give the LightningModule a transformers causal LM as `self.model` and its tokenizer as "
    "`self.tokenizer`, or define `make_sampling_client()` / `make_training_client()` returning "
    "clients over the live model (see bios_callbacks.callback.live_clients)."
)


@runtime_checkable
class Closeable(Protocol):
    def close(self) -> None: ...


@runtime_checkable
class Settles(Protocol):
    """A client that can say when it has stopped touching the model."""

    def wait_idle(self, timeout: float | None = None) -> bool: ...


@runtime_checkable
class CountsSamples(Protocol):
    """A sampling client that counts its samples (for progress lines)."""

    def progress(self) -> tuple[int, int]: ...


def _has_model_and_tokenizer(module: Any) -> bool:
    import torch

    model = getattr(module, "model", None)
    return isinstance(model, torch.nn.Module) and getattr(module, "tokenizer", None) is not None


def check_module(module: Any, *, needs_sampling: bool, needs_training: bool) -> None:
    """Raises ``TypeError`` naming the fix when ``module`` cannot hand out the needed clients."""
    if _has_model_and_tokenizer(module):
        return
    missing = [
        method
        for method, needed in (
            ("make_sampling_client", needs_sampling),
            ("make_training_client", needs_training),
        )
        if needed and not callable(getattr(module, method, None))
    ]
    if missing:
        raise TypeError(
            f"EvalCallback cannot evaluate {type(module).__name__}: it has no `model` + "
            f"`tokenizer` and no {' / '.join(missing)}(). To fix, {PROTOCOL_HELP}"
        )


def check_snapshot_module(module: Any) -> None:
    """Raises ``TypeError`` naming the fix when ``module`` has no `model` + `tokenizer` to copy
    for background rounds (``EvalCallback(async_infrequent=True)``)."""
    if not _has_model_and_tokenizer(module):
        raise TypeError(
            f"EvalCallback(async_infrequent=True) evaluates a copy of the LightningModule's "
            f"`model` with its `tokenizer`, but {type(module).__name__} has no such pair. To "
            "fix, give it a transformers causal LM as `self.model` and its tokenizer as "
            "`self.tokenizer`, or set async_infrequent=False."
        )


def can_split(module: Any) -> bool:
    """Whether a multi-process round can spread the module's work over the ranks: the callback
    makes the clients (`model` + `tokenizer`, no `make_*_client` hooks of its own)."""
    own_hooks = any(
        callable(getattr(module, hook, None))
        for hook in ("make_sampling_client", "make_training_client")
    )
    return _has_model_and_tokenizer(module) and not own_hooks


def check_shardable(module: Any, strategy: str, async_infrequent: bool) -> None:
    """Raises ``TypeError`` naming the fix when rounds cannot run on `module`'s sharded
    weights under `strategy` (FSDP, FSDP2)."""
    if not can_split(module):
        raise TypeError(
            f"EvalCallback under {strategy} samples from the sharded weights on every rank in "
            f"lockstep, so it makes the clients itself, but {type(module).__name__} "
            + (
                "defines make_sampling_client() / make_training_client(). To fix, remove them "
                "and give it `self.model` + `self.tokenizer`."
                if _has_model_and_tokenizer(module)
                else "has no `self.model` + `self.tokenizer`. To fix, give it a transformers "
                "causal LM as `self.model` and its tokenizer as `self.tokenizer`."
            )
        )
    if async_infrequent:
        raise ValueError(
            f"async_infrequent=True copies the whole model for background rounds, which a "
            f"sharded run ({strategy}) cannot hold on one rank: set async_infrequent=False "
            "(infrequent rounds then run in lockstep on the sharded weights), or evaluate "
            "checkpoints off the training path with `python -m bios_callbacks.eval.watch`."
        )


class LiveClients:
    """Makes each client once, on first use, and closes the ones it made at `close`.

    Example:
        >>> clients = LiveClients(lightning_module)  # doctest: +SKIP
        >>> clients.sampling() is clients.sampling()  # doctest: +SKIP
        True
    """

    def __init__(self, module: Any, sampling_options: dict[str, Any] | None = None):
        self.module = module
        self.sampling_options = sampling_options or {}
        self._sampling: Any = None
        self._training: Any = None
        self._owned: list[Any] = []

    def sampling(self) -> Any:
        """The sampling client over the live model (shares its weights)."""
        if self._sampling is None:
            from bios_callbacks.sampling.client import SamplingClient

            self._sampling = self._make(
                "make_sampling_client", SamplingClient, **self.sampling_options
            )
        return self._sampling

    def training(self) -> Any:
        """The training client over the live model (log-probs without changing it)."""
        if self._training is None:
            from bios_callbacks.training_client import TrainingClient

            self._training = self._make("make_training_client", TrainingClient)
        return self._training

    def sampling_progress(self) -> tuple[int, int]:
        """`(finished, requested)` samples of the sampling client; (0, 0) before one is made
        or when it does not count them."""
        if isinstance(self._sampling, CountsSamples):
            return self._sampling.progress()
        return (0, 0)

    def _make(self, hook: str, client_class: Any, **options: Any) -> Any:
        """The module's own `hook()`, else `client_class.from_module(model, tokenizer, ...)`."""
        maker = getattr(self.module, hook, None)
        if callable(maker):
            return maker()
        client = client_class.from_module(self.module.model, self.module.tokenizer, **options)
        self._owned.append(client)
        return client

    def settle(self) -> None:
        """Waits until the clients have stopped touching the model. Abandoned requests (a
        timed-out evaluator's) were cancelled, so they leave at the next step."""
        for client in (self._training, self._sampling):
            if isinstance(client, Settles):
                client.wait_idle()

    def close(self) -> None:
        """Closes the clients made here; the module's own stay open."""
        for client in self._owned:
            if isinstance(client, Closeable):
                client.close()
        self._owned = []
        self._sampling = self._training = None
