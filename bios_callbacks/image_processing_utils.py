"""Image processors by model name, for renderer factories that take one.

`get_renderer(name, tokenizer, image_processor)` passes the processor to a registered
renderer factory; the built-in renderers are text-only and ignore it.

Example:
    >>> from bios_callbacks.image_processing_utils import get_image_processor
    >>> processor = get_image_processor("Qwen/Qwen2.5-VL-7B-Instruct")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from transformers.image_processing_utils import BaseImageProcessor

    ImageProcessor: TypeAlias = BaseImageProcessor
else:
    ImageProcessor: TypeAlias = Any


@functools.cache
def get_image_processor(model_name: str) -> ImageProcessor:
    """The Hugging Face image processor of a hub id or local directory (a `:suffix` is
    ignored), loaded once per name with `AutoImageProcessor`."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_name.split(":", 1)[0])
