"""Checkpoints during training: every `save_every` steps, at the end, and on Ctrl-C.

Each checkpoint is a `bios_callbacks.checkpoints.save_checkpoint` directory (weights or LoRA
adapter, tokenizer, metadata with the latest eval results) that `model_path=` loads, plus
`trainer_state.ckpt` (optimizer, step count, eval schedule) that `resume_from=` continues from.
Both appear together: a checkpoint is written beside its directory and swapped in when whole.

Example:
    >>> from trainers.checkpointing import checkpoint_uri
    >>> import os; os.environ["BIOS_CHECKPOINT_ROOT"] = "runs"
    >>> checkpoint_uri("runs/demo/checkpoints/step_000010")
    'bios://demo/step_000010'
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L

from bios_callbacks.checkpoints import checkpoint_root
from bios_callbacks.model_loading import BIOS_URI_PREFIX
from trainers.config import TrainConfig

TRAINER_STATE = "trainer_state.ckpt"


def checkpoint_uri(path: str | Path) -> str:
    """`bios://<run>/<name>` for a checkpoint under the checkpoint root, else the plain path."""
    path = Path(path).resolve()
    root = checkpoint_root().resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == root:
        return f"{BIOS_URI_PREFIX}{path.parent.parent.name}/{path.name}"
    return str(path)


class CheckpointSaver(L.Callback):
    """Saves `bios` checkpoints of the LightningModule's `model` and `tokenizer`."""

    def __init__(self, cfg: TrainConfig, *, base_model: str, renderer_name: str):
        self.cfg = cfg
        self.base_model = base_model
        self.renderer_name = renderer_name
        self.last_saved: int | None = None
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        every = self.cfg.save_every
        if every and step % every == 0 and step < trainer.max_steps:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        finish = getattr(pl_module, "finish_training", None)
        if finish is not None:  # final test loss etc., so the last checkpoint records it
            finish()
        self.save(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            print(f"Interrupted at step {trainer.global_step}; saving a final checkpoint.")
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: Any) -> Path | None:
        """Writes the checkpoint for the current step (once per step) and prints its path."""
        from bios_callbacks.checkpoints import save_checkpoint

        step = trainer.global_step
        if step == self.last_saved:
            return None
        path = self.cfg.run_dir / "checkpoints" / f"step_{step:06d}"
        save_checkpoint(
            path,
            pl_module.model,
            pl_module.tokenizer,
            base_model=self.base_model,
            renderer_name=self.renderer_name,
            step=step,
            eval_results=latest_results(trainer, pl_module),
            # the full loop state (optimizer, callbacks), not Lightning's weights-only dump
            extra_files=lambda staging: trainer.save_checkpoint(
                staging / TRAINER_STATE, weights_only=False
            ),
        )
        self.last_saved = step
        self.saved.append(path)
        keep = self.cfg.keep_trainer_states
        if keep:
            for older in self.saved[:-keep]:
                (older / TRAINER_STATE).unlink(missing_ok=True)
        print(f"step {step}: saved checkpoint {checkpoint_uri(path)}", flush=True)
        return path

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved": self.last_saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_saved = state_dict.get("last_saved")


def latest_results(trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
    """The newest finite metrics: the trainer's own (losses, rewards) and the evaluators'."""
    results = dict(getattr(pl_module, "latest_metrics", {}))
    for key, value in trainer.callback_metrics.items():
        number = float(value)
        if math.isfinite(number):
            results[key] = number
    return results
