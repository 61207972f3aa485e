"""What both trainers share: loading the policy (with optional LoRA), the LightningModule base
that holds it, and the Lightning Trainer with its logger, evaluations and checkpoints.

Example:
    >>> from trainers.config import SFTConfig
    >>> from trainers.policy import load_policy
    >>> cfg = SFTConfig(train_data="train.jsonl", lora_rank=8)  # doctest: +SKIP
    >>> model, tokenizer, renderer_name, base_model = load_policy(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from trainers.checkpointing import (
    TRAINER_STATE,
    CheckpointSaver,
    check_run_dir,
    checkpoint_uri,
    latest_results,
)
from trainers.config import TrainConfig
from trainers.logger_runs import continued_run_id, remember_logged_run
from trainers.quiet import quiet_training, quiet_warnings


@quiet_warnings()  # peft's deprecation warning about transformers
def load_policy(
    cfg: TrainConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None
) -> tuple[torch.nn.Module, Any, str, str]:
    """Loads the model to train; returns (model, tokenizer, renderer_name, base_model).

    A `model` and `tokenizer` passed in are used instead of loading `cfg.model_name`.
    A checkpoint (as `resume_from`, or as `model_name` to start a new run from it) gives the
    weights or LoRA adapter to train further; the base model and renderer come from its metadata.
    """
    from bios_callbacks.checkpoints import load_checkpoint, read_checkpoint_metadata
    from bios_callbacks.models import is_checkpoint_ref, load_model
    from bios_callbacks.renderers import default_renderer_name

    if cfg.resume_from:
        trainer_state(cfg)  # fails before any loading if the optimizer state is gone
    elif (model is None) != (tokenizer is None):
        raise ValueError("Pass both model= and tokenizer=, or neither to load cfg.model_name.")
    check_run_dir(cfg)
    source = cfg.resume_from or cfg.model_name
    base_model, renderer_name = cfg.model_name, cfg.renderer_name
    if (cfg.resume_from or model is None) and is_checkpoint_ref(source):
        meta = read_checkpoint_metadata(source)
        base_model, renderer_name = meta.base_model, renderer_name or meta.renderer_name
        model, tokenizer = load_checkpoint(source, trainable=True)
        if cfg.lora_rank and not cfg.resume_from and meta.weights != "lora":
            model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
            base_model = str(source)  # the adapter applies to these weights, not the original
    else:
        if model is None:
            model, tokenizer = load_model(cfg.model_name)
        if cfg.lora_rank:
            model = add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    return model, tokenizer, renderer_name or default_renderer_name(base_model), base_model


def trainer_state(cfg: TrainConfig) -> Path:
    """The optimizer and loop state saved with `cfg.resume_from`; says what to do if it is gone."""
    from bios_callbacks.checkpoints import resolve_model_path

    state = resolve_model_path(cfg.resume_from) / TRAINER_STATE
    if not state.exists():
        raise FileNotFoundError(
            f"resume_from={cfg.resume_from!r} has no {TRAINER_STATE} (the optimizer state "
            "is kept only in the newest keep_trainer_states checkpoints). Resume from the "
            "run's latest checkpoint, or start a new run with model_name= set to this one."
        )
    return state


def resumed_step(cfg: TrainConfig) -> int:
    """The step `cfg.resume_from` was saved at (0 for a new run): where the data continues."""
    from bios_callbacks.checkpoints import read_checkpoint_metadata

    return read_checkpoint_metadata(cfg.resume_from).step if cfg.resume_from else 0


def add_lora(model: torch.nn.Module, rank: int, alpha: float) -> torch.nn.Module:
    """Wraps `model` in a peft LoRA adapter on all linear layers; only the adapter trains."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError(
            "lora_rank > 0 needs peft: pip install 'bios-callbacks[lora]', or set lora_rank=0."
        ) from None
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class PolicyModule(L.LightningModule):
    """Holds the causal LM as `model` and its tokenizer as `tokenizer` (what EvalCallback reads).

    Lightning checkpoints written by `CheckpointSaver` carry the optimizer and loop state only;
    the weights live next to them in the `save_checkpoint` format, which resuming loads.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.strict_loading = False
        self.latest_metrics: dict[str, float] = {}
        self.history: dict[str, dict[int, float]] = {}

    def on_fit_start(self) -> None:
        self.model.train()

    def release(self) -> None:
        """Frees what the module holds besides the model (threads, clients); called when
        fitting ends, also by an error. Subclasses that hold such things override it."""

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        with out_of_memory_explained(self.cfg):  # backward needs the most memory
            super().backward(loss, *args, **kwargs)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.cfg.learning_rate, weight_decay=self.cfg.weight_decay
        )
        warmup = self.cfg.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Writes metrics to every logger at `step`; remembers them for checkpoints and the
        run's result."""
        self.latest_metrics.update(metrics)
        for key, value in metrics.items():
            self.history.setdefault(key, {})[step] = value
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=step)


def make_logger(cfg: TrainConfig) -> Logger:
    """The Lightning logger `cfg.logger` names, writing into the run directory `cfg.run_dir`.

    - `tensorboard`: event files in the run directory (`tensorboard --logdir <run dir>`).
    - `csv`: `metrics.csv` (and the evaluators' `transcripts.jsonl`) in the run directory.
    - `wandb`: a W&B run named after the run, project `$WANDB_PROJECT` (default
      `bios-callbacks`), its files in `<run dir>/wandb/`; `WANDB_MODE=offline` needs no network
      (`wandb sync` uploads later).
    - `mlflow`: an MLflow run named after the run in experiment `$MLFLOW_EXPERIMENT_NAME`
      (default `bios-callbacks`) at `$MLFLOW_TRACKING_URI`, by default a local file store in
      `<run dir>/mlruns` that needs no server (MLflow 3 asks for `MLFLOW_ALLOW_FILE_STORE=true`
      to use one: it is set for this process unless already set).

    A run resumed with `resume_from` logs to the same W&B or MLflow run as the fit it continues
    (`trainers.logger_runs`).

    Example:
        >>> make_logger(SFTConfig(train_data="train.jsonl", logger="csv"))  # doctest: +SKIP
        <lightning.pytorch.loggers.csv_logs.CSVLogger object at ...>
    """
    run_dir = cfg.run_dir
    if cfg.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        run_dir.mkdir(parents=True, exist_ok=True)  # W&B writes below it but does not create it
        return WandbLogger(
            name=cfg.run_name, project=project, save_dir=str(run_dir), id=continued_run_id(cfg)
        )
    if cfg.logger == "mlflow":
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return _RunDirMLFlowLogger(
            run_dir,
            experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT,
            run_name=cfg.run_name,
            tracking_uri=mlflow_tracking_uri(cfg),
            run_id=continued_run_id(cfg),
        )
    if cfg.logger == "csv":
        return CSVLogger(save_dir=str(run_dir), name="", version="")
    return TensorBoardLogger(save_dir=str(run_dir), name="", version="")


DEFAULT_PROJECT = "bios-callbacks"
"""The W&B project and MLflow experiment of the trainers' runs unless the environment names one."""


def mlflow_tracking_uri(cfg: TrainConfig) -> str:
    """`$MLFLOW_TRACKING_URI`, else a local file store in the run directory (`mlruns/`).

    Example:
        >>> cfg = SFTConfig(train_data="t.jsonl", log_dir="/runs/a")  # doctest: +SKIP
        >>> mlflow_tracking_uri(cfg)  # doctest: +SKIP
        'file:/runs/a/mlruns'
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"file:{(cfg.run_dir / 'mlruns').resolve()}"


class _RunDirMLFlowLogger(MLFlowLogger):
    """An `MLFlowLogger` whose `save_dir` is the run directory. Lightning takes
    `trainer.log_dir` (where EvalCallback writes `eval_results.jsonl` and inline Inspect logs)
    from the first logger's `save_dir`, which for MLflow is its tracking store, or None."""

    def __init__(self, run_dir: Path, **options: Any) -> None:
        super().__init__(**options)
        self._run_dir = str(run_dir)

    @property
    def save_dir(self) -> str:
        return self._run_dir


def view_hint(cfg: TrainConfig) -> str:
    """How to look at the run's metrics with `cfg.logger`'s own viewer.

    Example:
        >>> view_hint(SFTConfig(train_data="t.jsonl", run_name="a"))  # doctest: +SKIP
        'tensorboard --logdir runs/a'
    """
    run_dir = cfg.run_dir
    if cfg.logger == "wandb":
        project = os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        return f"W&B project {project} (offline: wandb sync {run_dir}/wandb/offline-run-*)"
    if cfg.logger == "mlflow":
        uri = mlflow_tracking_uri(cfg)
        allow = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
        return f"{allow}mlflow ui --backend-store-uri {uri}"
    if cfg.logger == "csv":
        return str(run_dir / "metrics.csv")
    return f"tensorboard --logdir {run_dir}"


def build_trainer(
    cfg: TrainConfig,
    *,
    base_model: str,
    renderer_name: str,
    callbacks: Sequence[L.Callback] = (),
    evaluator_builders: Sequence[Callable[[], Any]] = (),
) -> L.Trainer:
    """A Lightning Trainer for `cfg.steps` optimizer steps logging to `cfg.logger` in `log_dir`,
    the config's evaluators (EvalCallback; `evaluator_builders` run first among the regular
    ones) and `bios` checkpoints every `save_every` steps."""
    all_callbacks: list[L.Callback] = []
    regular = [*evaluator_builders, *cfg.evaluator_builders]
    if regular or cfg.infrequent_evaluator_builders:
        from bios_callbacks import EvalCallback

        all_callbacks.append(
            EvalCallback(
                evaluator_builders=regular,
                eval_every=cfg.eval_every,
                infrequent_evaluator_builders=cfg.infrequent_evaluator_builders,
                infrequent_eval_every=cfg.infrequent_eval_every,
                async_infrequent=cfg.async_infrequent,
                snapshot_device=cfg.snapshot_device,
            )
        )
    saver = CheckpointSaver(cfg, base_model=base_model, renderer_name=renderer_name)
    all_callbacks += [StopSaver(saver), saver]
    all_callbacks.extend(callbacks)
    return L.Trainer(
        max_steps=cfg.steps,
        max_epochs=-1,
        accelerator="auto",
        devices=1,
        logger=make_logger(cfg),
        default_root_dir=str(cfg.run_dir),
        callbacks=all_callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        limit_val_batches=0,
    )


@dataclass
class TrainResult:
    """What a finished run left behind: its log dir, final `bios://` checkpoint, latest
    metrics, every metric the trainer logged by step (`history["train/loss"][3]`), and the
    trained model."""

    log_dir: Path
    checkpoint: str
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, dict[int, float]] = field(default_factory=dict)
    model: torch.nn.Module | None = None


SIGTERM_EXIT_STATUS = 143  # 128 + SIGTERM, what shells report for a process SIGTERM ended


class StopSaver(L.Callback):
    """When an error or SIGTERM ends training: frees the module's threads and clients, then
    saves a final checkpoint of the last finished step (Ctrl-C: `CheckpointSaver` saves).

    Lightning turns SIGTERM into `SIGTERMException` once the current step has finished, so the
    weights saved are those of a whole step; it flushes the loggers after these hooks.
    """

    def __init__(self, saver: CheckpointSaver):
        self.saver = saver
        self.start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        pl_module.release()  # the decode thread must not read the weights while they are saved
        if isinstance(exception, KeyboardInterrupt):
            return  # CheckpointSaver saves on Ctrl-C
        step = trainer.global_step
        reason = (
            "SIGTERM"
            if isinstance(exception, SIGTERMException)
            else f"{type(exception).__name__}: {exception}"
        )
        if self.start_step in (None, step):
            print(f"Stopped at step {step} by {reason}; no step finished, nothing to save.")
            return
        print(f"Stopped at step {step} by {reason}; saving a final checkpoint.", flush=True)
        try:
            self.saver.save(trainer, pl_module)
        except Exception as error:  # the original error matters more; say why nothing was saved
            print(f"warning: the final checkpoint was not saved: {error!r}", file=sys.stderr)


def fit(
    cfg: TrainConfig,
    module: PolicyModule,
    batches: Iterable[Any],
    *,
    base_model: str,
    renderer_name: str,
    callbacks: Sequence[L.Callback] = (),
    evaluator_builders: Sequence[Callable[[], Any]] = (),
) -> TrainResult:
    """Fits `module` (resuming from `cfg.resume_from` if set) and reports the final checkpoint.

    `evaluator_builders` are the trainer's own regular evaluators (SFT's test loss), run before
    the config's. An error inside the loop saves a checkpoint of the last finished step and
    propagates; SIGTERM stops after the current step, saves, and raises `SystemExit(143)`;
    Ctrl-C saves and raises `SystemExit(1)`. The module's threads and clients are released and
    a W&B run is finished in every case.
    """
    resume = trainer_state(cfg) if cfg.resume_from else None
    if resume is not None:
        print(f"resuming from {checkpoint_uri(resume.parent)}; the run goes on in {cfg.run_dir}")
    with quiet_training():
        trainer = build_trainer(
            cfg,
            base_model=base_model,
            renderer_name=renderer_name,
            callbacks=callbacks,
            evaluator_builders=evaluator_builders,
        )
        try:
            remember_logged_run(cfg, trainer.logger)
            trainer.fit(module, train_dataloaders=batches, ckpt_path=resume, weights_only=True)
        except SIGTERMException:
            print(f"Stopped by SIGTERM at step {trainer.global_step}.", file=sys.stderr, flush=True)
            raise SystemExit(SIGTERM_EXIT_STATUS) from None
        finally:
            module.release()
            if cfg.logger == "wandb":
                _finish_wandb_run()

    saver = next(cb for cb in trainer.callbacks if isinstance(cb, CheckpointSaver))
    final = checkpoint_uri(saver.saved[-1]) if saver.saved else ""
    print(f"done: step {trainer.global_step}, checkpoint {final}")
    print(f"view the logs: {view_hint(cfg)}")
    return TrainResult(
        cfg.run_dir, final, latest_results(trainer, module), module.history, module.model
    )


def _finish_wandb_run() -> None:
    """Finishes the W&B run the logger started, if it started one (else a later run in this
    process would log into it; starting one here could raise over the error being handled)."""
    import wandb

    if wandb.run is not None:
        wandb.run.finish()


def explain_out_of_memory(exc: BaseException, cfg: TrainConfig) -> BaseException:
    """Turns an allocation failure into an error that says the batch did not fit in memory."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text:
        keys = cfg.size_keys()
        settings = ", ".join(f"{key}={getattr(cfg, key)}" for key in keys)
        return MemoryError(
            f"Out of memory at {settings}: the batch does not fit. Lower "
            f"{', '.join(keys[:-1])} or {keys[-1]}, or set lora_rank=8 to train an adapter "
            f"instead of all weights. ({text.splitlines()[0] if text else exc!r})"
        )
    return exc


@contextmanager
def out_of_memory_explained(cfg: TrainConfig) -> Iterator[None]:
    """Re-raises an allocation failure inside the block as `explain_out_of_memory` says."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        explained = explain_out_of_memory(exc, cfg)
        if explained is exc:
            raise
        raise explained from exc
