"""Inline and offline evaluations for fine-tuning language models with Lightning."""
