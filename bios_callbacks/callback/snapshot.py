"""A copy of the weights a background round evaluates while training changes the originals.

`WeightSnapshot.take(model)` returns a second instance of `model` holding the weights as they
are now. The first call builds it (a deep copy of the module structure); later calls copy the
current weights into that same instance, so a run holds at most one extra copy however many
rounds it evaluates. Only what training can change is copied: trainable parameters and
buffers. Frozen parameters (``requires_grad=False``, e.g. the base weights of a LoRA run) are
shared with the live model, read-only, when the snapshot lives on the model's device; on
another device they are copied too.

Memory: the trainable weights once more (full fine-tuning of SmolLM2-135M in float32: 0.54
GB; a rank-8 LoRA adapter of it, as the trainers make it: 9.8 MB), on the snapshot's device.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(2, 2)
    >>> snapshot = WeightSnapshot()
    >>> copy = snapshot.take(model)
    >>> with torch.no_grad():
    ...     _ = model.weight.add_(1.0)
    >>> bool(torch.equal(copy.weight + 1.0, model.weight))
    True
    >>> snapshot.take(model) is copy and bool(torch.equal(copy.weight, model.weight))
    True
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from bios_callbacks.types import SamplingParams


class WeightSnapshot:
    """One reusable copy of a model's weights on `device` (None: the model's own device)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = None if device is None else torch.device(device)
        self.model: torch.nn.Module | None = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._source: torch.nn.Module | None = None
        self._trainable: frozenset[int] = frozenset()  # ids of the source's trainable params

    @property
    def copied_bytes(self) -> int:
        """Bytes the snapshot holds of its own (shared frozen weights not counted)."""
        return sum(copy.numel() * copy.element_size() for copy, _ in self._pairs)

    def take(self, model: torch.nn.Module) -> torch.nn.Module:
        """The snapshot, now holding `model`'s current weights (in eval mode, no gradients).
        It is built again when the model, or which of its parameters train, changed."""
        trainable = frozenset(id(p) for p in model.parameters() if p.requires_grad)
        if self.model is None or self._source is not model or self._trainable != trainable:
            self.model, self._pairs = _copy_model(model, self.device or _device_of(model))
            self._source, self._trainable = model, trainable
        else:
            with torch.no_grad():
                for copy_, live in self._pairs:
                    copy_.copy_(live)
        if any(copy_.is_cuda for copy_, _ in self._pairs):
            torch.cuda.synchronize()  # the copy is complete before training changes `model`
        return self.model

    def release(self) -> None:
        """Drops the copy (its memory is freed once no round uses it)."""
        self.model, self._pairs, self._source, self._trainable = None, [], None, frozenset()


def _device_of(model: torch.nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


def _copy_model(
    model: torch.nn.Module, device: torch.device
) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A deep copy of `model` on `device` whose tensors are fresh copies, except frozen
    parameters already on `device`, which are the live ones. Gradients are not copied."""
    memo: dict[int, Any] = {}
    for _, tensor in _tensors(model):
        if id(tensor) in memo:
            continue
        if isinstance(tensor, torch.nn.Parameter):
            if not tensor.requires_grad and tensor.device == device:
                memo[id(tensor)] = tensor
            else:
                data = tensor.detach().to(device, copy=True)
                memo[id(tensor)] = torch.nn.Parameter(data, requires_grad=False)
        else:
            memo[id(tensor)] = tensor.detach().to(device, copy=True)
    snapshot = copy.deepcopy(model, memo).to(device).eval()
    live = dict(_tensors(model))
    pairs = [(t, live[name]) for name, t in _tensors(snapshot) if t is not live[name]]
    return snapshot, pairs


class SeededSampling:
    """A sampling client whose unseeded, non-greedy requests get seeds from a generator of
    their own (seeded by `seed`), so a round in another thread never draws from torch's global
    generator, which the training loop uses. Everything else is the wrapped client's.

    Example:
        >>> live = SamplingClient.from_module(model, tokenizer)  # doctest: +SKIP
        >>> client = SeededSampling(live, seed=7)  # doctest: +SKIP
    """

    def __init__(self, client: Any, seed: int) -> None:
        self._client = client
        self._seeds = random.Random(seed)

    def _seeded(self, params: SamplingParams | None) -> SamplingParams:
        params = params or SamplingParams()
        if params.seed is not None or params.temperature == 0:
            return params
        return dataclasses.replace(params, seed=self._seeds.getrandbits(62))

    async def sample_async(
        self,
        prompt: Sequence[int] | Any,
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> Any:
        """`sample_async` of the wrapped client, seeded."""
        return await self._client.sample_async(
            prompt=prompt, num_samples=num_samples, sampling_params=self._seeded(sampling_params)
        )

    def sample(
        self,
        prompt: Sequence[int] | Any,
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
    ) -> Any:
        """`sample` of the wrapped client, seeded."""
        return self._client.sample(prompt, num_samples, self._seeded(sampling_params))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
