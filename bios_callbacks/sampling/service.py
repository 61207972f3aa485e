"""The entry point for sampling from a base model or a saved checkpoint."""

from __future__ import annotations

from bios_callbacks.sampling.client import SamplingClient
from bios_callbacks.sampling.defaults import (
    COMPUTE_DTYPES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_CACHE_TOKENS,
)


class ServiceClient:
    """Makes sampling clients for models by name or checkpoint path.

    Args:
        max_batch_size: most sequences a client decodes at once.
        max_cache_tokens: bound on sequences x cached positions (KV-cache memory).
        dtype: the weights' dtype, "float32" (default, exact) or "bfloat16" (about 1.8x faster
            decoding on CPUs with AVX512-BF16 or AMX, and on GPUs; results differ slightly).

    Example:
        >>> import bios_callbacks as bios
        >>> client = bios.ServiceClient().create_sampling_client(
        ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> client = bios.ServiceClient().create_sampling_client(
        ...     model_path="bios://my-run/final")                   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_cache_tokens: int = DEFAULT_MAX_CACHE_TOKENS,
        dtype: str = "float32",
    ) -> None:
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {list(COMPUTE_DTYPES)}.")
        self._dtype = dtype
        self._engine_options = {
            "max_batch_size": max_batch_size,
            "max_cache_tokens": max_cache_tokens,
        }

    def create_sampling_client(
        self, base_model: str | None = None, model_path: str | None = None
    ) -> SamplingClient:
        """A client over `model_path` (a checkpoint dir or `bios://run/name`) or `base_model`.

        `base_model` is a Hugging Face id (the embedded
        `HuggingFaceTB/SmolLM2-135M-Instruct` needs no network) or a local model directory.
        """
        if model_path is None and base_model is None:
            raise ValueError(
                "create_sampling_client needs base_model= (e.g. "
                "'HuggingFaceTB/SmolLM2-135M-Instruct') or model_path= (a checkpoint directory "
                "or bios://<run>/<name>)."
            )
        import torch

        from bios_callbacks.models import load_model
        from bios_callbacks.sampling.client import SamplingClient

        source = model_path if model_path is not None else base_model
        model, tokenizer = load_model(str(source), dtype=getattr(torch, self._dtype))
        return SamplingClient.from_module(
            model, tokenizer, model_name=base_model or str(source), **self._engine_options
        )
