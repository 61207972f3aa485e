"""Sampling defaults shared by the engine, the clients, the Inspect bridge and the CLIs.

Torch-free, so command-line `--help` and argument checks can read them without loading torch.

Example:
    >>> from bios_callbacks.sampling.defaults import DEFAULT_MAX_BATCH_SIZE
    >>> DEFAULT_MAX_BATCH_SIZE
    64
"""

DEFAULT_MAX_BATCH_SIZE = 64
"""Most sequences decoding at once, unless a client says otherwise. On CPU a decode step of 64
rows gave 1.2x the tokens/s of 32 (`bench/decode_step.py`); `max_cache_tokens` still bounds
the KV cache."""
DEFAULT_MAX_CACHE_TOKENS = 65_536
"""Bound on rows x cached positions (KV-cache memory), unless a client says otherwise."""
DEFAULT_MAX_PREFILL_TOKENS = 8_192
"""Bound on padded prompt tokens prefilled in one forward pass."""
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
"""Names `compute_dtype` accepts (or the torch dtypes themselves)."""
