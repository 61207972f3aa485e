"""Transcripts beside a CSV run's `metrics.csv`: `transcripts.jsonl` in the logger's log_dir,
one line per item: `{"step", "evaluator", "prompt", "response", "score", "explanation"}`.

Example:
    >>> write(CSVLogger("logs"), 10, {"qa": [Transcript("2+2?", "4", 1.0)]})  # doctest: +SKIP
    >>> open("logs/lightning_logs/version_0/transcripts.jsonl").readline()  # doctest: +SKIP
    '{"step": 10, "evaluator": "qa", "prompt": "2+2?", "response": "4", "score": 1.0, ...}\\n'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bios_callbacks.evaluators.base import Transcript

FILE_NAME = "transcripts.jsonl"


def write(logger: Any, step: int, transcripts: Mapping[str, Sequence[Transcript]]) -> None:
    """Appends the round's items to `<logger.log_dir>/transcripts.jsonl`."""
    path = Path(logger.log_dir) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"step": step, "evaluator": name, **item._asdict()}, ensure_ascii=False)
        for name, items in transcripts.items()
        for item in items
    ]
    with path.open("a", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))
