"""Sampling: clients, the continuous-batching engine over live weights, and its parts.

    client.py         SamplingClient: `sample_async` over a model's current weights
    service.py        ServiceClient: clients for a base model, a saved checkpoint or a server
    server_client.py  ServerSamplingClient: the same interface over an OpenAI-compatible server
    engine.py         DecodeEngine: the decode thread, its queue and failure handling
    scheduler.py      which queued samples join the batch (pure Python)
    runner.py         ModelRunner: batch tensors, prefill, decode steps
    request.py, sequence.py   a queued request; one sample while it decodes
    kv_cache.py, prefix_cache.py, token_sampling.py   the cache, shared prefixes, token choice
    defaults.py       torch-free defaults (batch size, cache bound)

Names resolve lazily, so `bios_callbacks.sampling.defaults` does not import torch.

Example:
    >>> from bios_callbacks.sampling import SamplingClient  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SamplingClient": "bios_callbacks.sampling.client",
    "ServiceClient": "bios_callbacks.sampling.service",
    "ServerSamplingClient": "bios_callbacks.sampling.server_client",
    "DecodeEngine": "bios_callbacks.sampling.engine",
}
__all__ = ["DecodeEngine", "SamplingClient", "ServerSamplingClient", "ServiceClient"]

if TYPE_CHECKING:
    from bios_callbacks.sampling.client import SamplingClient
    from bios_callbacks.sampling.engine import DecodeEngine
    from bios_callbacks.sampling.server_client import ServerSamplingClient
    from bios_callbacks.sampling.service import ServiceClient


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bios_callbacks.sampling' has no attribute {name!r}")
