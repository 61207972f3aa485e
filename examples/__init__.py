"""Runnable examples: `python -m examples.demo` (what `make demo` runs) and the guide's listings."""
