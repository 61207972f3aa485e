"""Which W&B or MLflow run a run directory logs to, so a resumed run goes on logging there.

The trainers write `logger_run.json` into the run directory when a fit starts
(`{"wandb": "<run id>"}`, `{"mlflow": "<run id>"}`); a run resumed with `resume_from` passes
the id back to the logger, and its curves continue the first fit's instead of starting a new
W&B or MLflow run.

Example:
    >>> cfg = SFTConfig(  # doctest: +SKIP
    ...     train_data="t.jsonl", logger="wandb", resume_from="bios://a/step_000004")
    >>> continued_run_id(cfg)  # doctest: +SKIP
    'k3x9q2ab'
"""

from __future__ import annotations

import json
from typing import Any

from trainers.config import TrainConfig

LOGGER_RUN_FILE = "logger_run.json"
"""In a run directory: the id of the W&B or MLflow run it logs to, by logger."""

_KINDS = ("wandb", "mlflow")  # loggers whose runs live outside the run directory


def continued_run_id(cfg: TrainConfig) -> str | None:
    """The W&B / MLflow run a resumed run continues; None for a new run, for a logger that
    writes into the run directory itself, or when the first fit used another logger."""
    if not cfg.resume_from or cfg.logger not in _KINDS:
        return None
    return _recorded(cfg).get(cfg.logger)


def remember_logged_run(cfg: TrainConfig, logger: Any) -> None:
    """Records the id of the run `logger` (made by `make_logger(cfg)`) logs to."""
    if cfg.logger == "wandb":
        run_id = logger.experiment.id
    elif cfg.logger == "mlflow":
        run_id = logger.run_id
    else:
        return
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    recorded = {**_recorded(cfg), cfg.logger: run_id}
    (cfg.run_dir / LOGGER_RUN_FILE).write_text(json.dumps(recorded) + "\n")


def _recorded(cfg: TrainConfig) -> dict[str, str]:
    try:
        return json.loads((cfg.run_dir / LOGGER_RUN_FILE).read_text())
    except FileNotFoundError:
        return {}
