"""Sampling and training clients over the model a LightningModule is training.

The protocol a LightningModule follows so `EvalCallback` can evaluate it:

1. It holds a transformers causal LM as ``self.model`` and its tokenizer as
   ``self.tokenizer``: nothing more to write.
2. Otherwise it defines ``make_sampling_client()`` (for `SamplingClientEvaluator`) and/or
   ``make_training_client()`` (for `TrainingClientEvaluator`); each is called once per fit and
   must return a client sharing the live weights. A client with a ``close()`` method is closed
   when the fit ends.

Example:
    >>> class MyModule(L.LightningModule):                      # doctest: +SKIP
    ...     def make_sampling_client(self):
    ...         return SamplingClient.from_module(self.net.lm, self.tok)
    ...     def make_training_client(self):
    ...         return TrainingClient.from_module(self.net.lm, self.tok)
"""

from __future__ import annotations

from typing import Any

PROTOCOL_HELP = (
    "give the LightningModule a transformers causal LM as `self.model` and its tokenizer as "
    "`self.tokenizer`, or define `make_sampling_client()` / `make_training_client()` returning "
    "clients over the live model (see bios_callbacks.live_clients)."
)


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


class LiveClients:
    """Makes each client once, on first use, and closes them at `close`.

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

    def sampling(self) -> Any:
        """The sampling client over the live model (shares its weights)."""
        if self._sampling is None:
            from bios_callbacks.sampling.client import SamplingClient

            self._sampling = self._make(
                "make_sampling_client", SamplingClient, **self.sampling_options
            )
        return self._sampling

    def sampling_progress(self) -> tuple[int, int]:
        """`(finished, requested)` samples of the current sampling client; (0, 0) before one
        is made or when the module's own client does not count them."""
        progress = getattr(self._sampling, "progress", None)
        return progress() if callable(progress) else (0, 0)

    def training(self) -> Any:
        """The training client over the live model (log-probs without changing it)."""
        if self._training is None:
            from bios_callbacks.training_client import TrainingClient

            self._training = self._make("make_training_client", TrainingClient)
        return self._training

    def _make(self, hook: str, client_class: Any, **options: Any) -> Any:
        """The module's own `hook()`, else `client_class.from_module(model, tokenizer, ...)`."""
        maker = getattr(self.module, hook, None)
        if callable(maker):
            return maker()
        return client_class.from_module(self.module.model, self.module.tokenizer, **options)

    def settle(self, *, restart_sampling: bool = False) -> None:
        """Waits until the clients have stopped touching the model (a cancelled scoring call
        finishes its current batch); with ``restart_sampling`` (after a timed-out request)
        closes the sampling client so the next round gets a fresh one instead of waiting for
        abandoned requests."""
        wait_training = getattr(self._training, "wait_idle", None)
        if callable(wait_training):
            wait_training()
        if self._sampling is None:
            return
        if restart_sampling:
            close = getattr(self._sampling, "close", None)
            if callable(close):
                close()
            self._sampling = None
            return
        wait_idle = getattr(self._sampling, "wait_idle", None)
        if callable(wait_idle):
            wait_idle()

    def close(self) -> None:
        """Closes the clients made so far."""
        for client in (self._sampling, self._training):
            close = getattr(client, "close", None)
            if callable(close):
                close()
        self._sampling = self._training = None
