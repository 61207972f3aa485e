"""Checkpoints during training: every `save_every` steps, at the end, and on Ctrl-C.

Each checkpoint is a `bios_callbacks.checkpoints.save_checkpoint` directory (weights or LoRA
adapter, tokenizer, metadata with the latest eval results) that `model_path=` loads, plus
`trainer_state.ckpt` (optimizer, step count, eval schedule) that `resume_from=` continues from.
Both appear together: a checkpoint is written beside its directory and swapped in when whole.

A run directory holds one run's history. A new run refuses a directory that already holds a
run's outputs, and resuming continues in the checkpoint's run directory only from that run's
latest checkpoint (`check_run_dir`), so nothing a run wrote is replaced by a different history.

Example:
    >>> from trainers.checkpointing import checkpoint_uri
    >>> import os; os.environ["BIOS_CHECKPOINT_ROOT"] = "runs"
    >>> checkpoint_uri("runs/demo/checkpoints/step_000010")
    'bios://demo/step_000010'
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import lightning as L

from bios_callbacks.callback.results import RESULTS_FILE_NAME
from bios_callbacks.checkpoints import checkpoint_root
from bios_callbacks.models import BIOS_URI_PREFIX, CHECKPOINT_METADATA_FILE
from trainers.config import TrainConfig, resumed_run_dir
from trainers.quiet import no_progress_bars

TRAINER_STATE = "trainer_state.ckpt"
_STEP_NAME = re.compile(r"step_(\d+)")


def checkpoint_uri(path: str | Path) -> str:
    """`bios://<run>/<name>` for a checkpoint under the checkpoint root, else the plain path."""
    path = Path(path).resolve()
    root = checkpoint_root().resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == root:
        return f"{BIOS_URI_PREFIX}{path.parent.parent.name}/{path.name}"
    return str(path)


def step_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """The `step_<N>` checkpoints the trainers wrote in `run_dir/checkpoints`, by step."""
    folder = Path(run_dir) / "checkpoints"
    found = {}
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _STEP_NAME.fullmatch(path.name)
        if match and (path / CHECKPOINT_METADATA_FILE).is_file():
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def check_run_dir(cfg: TrainConfig) -> None:
    """Refuses a run directory where training would mix two histories (before any loading).

    Resuming in the checkpoint's own run directory needs that checkpoint to be the run's latest:
    going on from an earlier one would replace the later checkpoints and log their steps twice.
    Any other run (a new one, or a resumed one given its own `run_name`/`log_dir`) needs a
    directory without a run's outputs (checkpoints, eval results, TensorBoard event files).
    """
    from bios_callbacks.checkpoints import read_checkpoint_metadata

    run_dir = cfg.run_dir
    own = resumed_run_dir(cfg.resume_from) if cfg.resume_from else None
    if own is not None and own.resolve() == run_dir.resolve():
        step = read_checkpoint_metadata(cfg.resume_from).step
        later = [path for s, path in step_checkpoints(run_dir).items() if s > step]
        if later:
            names = ", ".join(path.name for path in later)
            raise FileExistsError(
                f"resume_from={cfg.resume_from!r} is step {step} of run {run_dir}, which already "
                f"has later checkpoints ({names}): continuing there would replace them. Resume "
                f"from the latest, resume_from={checkpoint_uri(later[-1])}, or continue from "
                f"step {step} as a new run by adding run_name=<new name>."
            )
        return
    checkpoints = step_checkpoints(run_dir)
    outputs = [f"{len(checkpoints)} checkpoint(s)"] if checkpoints else []
    outputs += [RESULTS_FILE_NAME] if (run_dir / RESULTS_FILE_NAME).exists() else []
    outputs += ["TensorBoard logs"] if any(run_dir.glob("events.out.tfevents.*")) else []
    if outputs:
        latest = checkpoint_uri(list(checkpoints.values())[-1]) if checkpoints else "<checkpoint>"
        raise FileExistsError(
            f"log_dir {str(run_dir)!r} already holds a run ({', '.join(outputs)}): a new run "
            "there would mix its logs, results and checkpoints with that one. Choose another "
            f"run_name (or log_dir), or continue that run with resume_from={latest}."
        )


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
        with no_progress_bars():
            save_checkpoint(
                path,
                pl_module.model,
                pl_module.tokenizer,
                base_model=self.base_model,
                renderer_name=self.renderer_name,
                step=step,
                # the full loop state (optimizer, callbacks), not Lightning's weights-only dump
                extra_files=lambda staging: trainer.save_checkpoint(
                    staging / TRAINER_STATE, weights_only=False
                ),
                # read after that: EvalCallback.on_save_checkpoint logs a pending background
                # round first, so the metadata has it (as the trainer state does)
                eval_results=lambda: latest_results(trainer, pl_module),
            )
        self.last_saved = step
        self.saved.append(path)
        self.prune_trainer_states(step)
        print(f"step {step}: saved checkpoint {checkpoint_uri(path)}", flush=True)
        return path

    def prune_trainer_states(self, step: int) -> None:
        """Keeps `trainer_state.ckpt` in the newest `keep_trainer_states` checkpoints of the
        run up to `step`, those written before a resume included."""
        keep = self.cfg.keep_trainer_states
        if not keep:
            return
        with_state = [
            path
            for s, path in step_checkpoints(self.cfg.run_dir).items()
            if s <= step and (path / TRAINER_STATE).exists()
        ]
        for older in with_state[:-keep]:
            (older / TRAINER_STATE).unlink(missing_ok=True)

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
