"""A saved checkpoint as a GGUF file, for llama.cpp's server.

Runs llama.cpp's own `convert_hf_to_gguf.py` (from the same sources `build_llama_server` uses)
on a full-weight checkpoint directory, once: the file is cached under
`$BIOS_CALLBACKS_CACHE/gguf/` by checkpoint path and write time. A LoRA checkpoint is merged
into its base model first. Needs the `serve` extra (`pip install -e '.[serve]'`: the converter
imports sentencepiece).

Example:
    >>> from bios_callbacks.serving.gguf_convert import checkpoint_to_gguf
    >>> path = checkpoint_to_gguf("bios://my-run/final")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bios_callbacks.models import (
    CHECKPOINT_METADATA_FILE,
    cache_root,
    is_checkpoint_ref,
    read_checkpoint_metadata,
    resolve_model_path,
)
from bios_callbacks.serving.llama_cpp import LLAMA_CPP_PYTHON_VERSION, fetch_llama_cpp_source

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Weight types the converter writes (f16 keeps a trained model's answers; q8_0 is smaller)."""


def checkpoint_to_gguf(
    checkpoint: str | os.PathLike[str], *, outtype: str = "f16", force: bool = False
) -> Path:
    """The GGUF file of `checkpoint` (a directory or `bios://run/name`), converted once.

    A Hugging Face model directory works too. Raises RuntimeError with the converter's
    message for architectures llama.cpp does not know.

    Example:
        >>> checkpoint_to_gguf("runs/demo/checkpoints/final", outtype="q8_0")  # doctest: +SKIP
        PosixPath('/root/.cache/bios_callbacks/gguf/final-3f2a9c1e0b7d-q8_0.gguf')
    """
    if outtype not in OUT_TYPES:
        raise ValueError(f"outtype={outtype!r}: expected one of {list(OUT_TYPES)}.")
    name = str(checkpoint)
    directory = (resolve_model_path(name) if is_checkpoint_ref(name) else Path(name)).resolve()
    if not ((directory / "config.json").is_file() or _is_lora(directory)):
        raise FileNotFoundError(
            f"{name!r} ({directory}) is not a model directory: expected a checkpoint saved by "
            "save_checkpoint (or bios://<run>/<name>), or a Hugging Face model directory."
        )
    stamp = max(p.stat().st_mtime_ns for p in directory.iterdir() if p.is_file())
    key = hashlib.sha256(f"{directory}\0{stamp}".encode()).hexdigest()[:12]
    target = cache_root() / "gguf" / f"{directory.name}-{key}-{outtype}.gguf"
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    converter = fetch_llama_cpp_source(LLAMA_CPP_PYTHON_VERSION) / "convert_hf_to_gguf.py"
    with tempfile.TemporaryDirectory(prefix="bios-gguf-") as tmp:
        source = directory
        if _is_lora(directory):
            source = Path(tmp) / "merged"
            _merge_lora(directory, source)
        staged = Path(tmp) / target.name
        command = [sys.executable, str(converter), str(source), "--outfile", str(staged)]
        completed = subprocess.run(
            [*command, "--outtype", outtype], capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            tail = "\n".join(completed.stderr.strip().splitlines()[-15:])
            hint = (
                " Install the serve extra: pip install -e '.[serve]'."
                if "sentencepiece" in tail
                else ""
            )
            raise RuntimeError(
                f"Converting {directory} to GGUF failed (exit {completed.returncode}):\n{tail}\n"
                f"llama.cpp's converter supports the architectures it lists; serve other "
                f"models with vLLM (`vllm serve {directory}`).{hint}"
            )
        staged.replace(target)
    return target


def _is_lora(directory: Path) -> bool:
    if not (directory / CHECKPOINT_METADATA_FILE).is_file():
        return False
    return read_checkpoint_metadata(directory).weights == "lora"


def _merge_lora(directory: Path, out: Path) -> None:
    """Saves base model + adapter of a LoRA checkpoint as one full-weight model directory."""
    from bios_callbacks.models import load_model

    model, tokenizer = load_model(str(directory))
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
