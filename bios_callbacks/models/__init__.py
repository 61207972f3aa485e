"""Model I/O: where weights come from, how checkpoints are named, saved and loaded.

    references.py   constants, bios:// URIs, checkpoint metadata (imports nothing else here)
    tokens.py       token-id conventions (the pad id)
    atomic_dirs.py  directories that appear complete or not at all
    hub.py          the embedded model's cache and the Hugging Face hub
    saving.py       save_checkpoint
    loading.py      load_model, load_tokenizer, load_checkpoint (LoRA included)
    train_flags.py  evaluation mode with every submodule's flag restored

Imports run one way (references <- hub <- loading), with no cycle. Names resolve lazily, so
`from bios_callbacks.models import EMBEDDED_MODEL` does not import torch.

Example:
    >>> from bios_callbacks.models import EMBEDDED_MODEL
    >>> EMBEDDED_MODEL
    'HuggingFaceTB/SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EMBEDDED_MODEL": "references",
    "BIOS_URI_PREFIX": "references",
    "CHECKPOINT_METADATA_FILE": "references",
    "CheckpointMetadata": "references",
    "checkpoint_dir": "references",
    "checkpoint_root": "references",
    "is_checkpoint_ref": "references",
    "read_checkpoint_metadata": "references",
    "resolve_model_path": "references",
    "pad_token_id": "tokens",
    "CACHE_ENV": "hub",
    "cache_root": "hub",
    "embedded_cache_dir": "hub",
    "embedded_gguf_file": "hub",
    "ensure_embedded_cache": "hub",
    "hub_offline": "hub",
    "save_checkpoint": "saving",
    "load_checkpoint": "loading",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "evaluation_mode": "train_flags",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"bios_callbacks.models.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'bios_callbacks.models' has no attribute {name!r}")
