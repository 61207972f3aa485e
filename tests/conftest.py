"""Shared fixtures: the SmolLM2 tokenizer, a tiny random Llama, and the real embedded model."""

from __future__ import annotations

import pytest
from tiny import make_tiny_model

from bios_callbacks.models import EMBEDDED_MODEL


@pytest.fixture(scope="session")
def tokenizer():
    """The SmolLM2 tokenizer (shared: do not mutate)."""
    from bios_callbacks.tokenizer_utils import get_tokenizer

    return get_tokenizer(EMBEDDED_MODEL)


@pytest.fixture
def tiny_model(tokenizer):
    """A fresh 2-layer random LlamaForCausalLM matching `tokenizer` (seed 0, fp32, eval mode)."""
    return make_tiny_model(tokenizer, seed=0)


@pytest.fixture(scope="session")
def embedded():
    """`(model, tokenizer)` of the real SmolLM2-135M-Instruct, loaded once per session."""
    from bios_callbacks.models import load_model

    return load_model(EMBEDDED_MODEL)
