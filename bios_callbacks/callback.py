"""`EvalCallback`: run evaluators during a Lightning fit and log them like any other metric.

How it counts. Step N means the weights after N optimizer steps, ``trainer.global_step``.
Each list (regular, infrequent) runs at N=0 before the first update, whenever ``global_step``
reaches or passes a multiple of its interval, and after the last step; never twice at the same
N. Under gradient accumulation ``global_step`` only moves on the accumulation boundary, so a
round happens once. With manual optimization ``global_step`` counts every ``optimizer.step()``
of every optimizer, so two optimizers stepping each batch advance it by 2: with
``eval_every=5`` a round then runs at the first step >= 5, 10, ... (6, 10, 16, 20, ...) and is
logged at that step. The schedule is saved in Lightning checkpoints, so a resumed run neither
repeats nor skips a round.

Example:
    >>> from bios_callbacks import EvalCallback
    >>> from bios_callbacks.evaluators import NLLEvaluator
    >>> callback = EvalCallback(
    ...     evaluator_builders=[lambda: NLLEvaluator(held_out_tokens)],
    ...     eval_every=100,
    ...     infrequent_evaluator_builders=[expensive_qa_builder],
    ...     infrequent_eval_every=500,
    ... )  # doctest: +SKIP
    >>> L.Trainer(callbacks=[callback]).fit(module)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from bios_callbacks.eval_results import ResultsFile, RoundRecord
from bios_callbacks.eval_round import EvaluatorSlot, RoundOutcome, name_slots, run_round
from bios_callbacks.evaluators.base import (
    EvaluatorBuilder,
    SamplingClientEvaluator,
    TrainingClientEvaluator,
)
from bios_callbacks.held_out import find_overlap, texts_from_dataset
from bios_callbacks.live_clients import LiveClients, check_module
from bios_callbacks.run_sync import run_sync
from bios_callbacks.train_flags import evaluation_mode

log = logging.getLogger(__name__)

LISTS = ("regular", "infrequent")
CHECKPOINT_KEY = "eval_results"


class EvalCallback(Callback):
    """Runs evaluators on the optimizer-step schedule and logs ``eval/<evaluator>/<key>``.

    Args:
        evaluator_builders: zero-argument callables returning evaluators, run every
            ``eval_every`` steps (0 disables them).
        infrequent_evaluator_builders: the expensive ones, every ``infrequent_eval_every``.
        eval_on_checkpoint: before a checkpoint is saved at a step not yet evaluated, run both
            lists, so every checkpoint carries results (and a step-based ``ModelCheckpoint``
            monitoring an eval metric ranks each checkpoint by its own step's value).
        evaluator_timeout_s: a per-evaluator limit in seconds (None: no limit); an evaluator
            past it is reported as failed. Only evaluators that await can be interrupted.
        fail_fast: re-raise the first evaluator failure instead of reporting it.
        training_texts: strings the model trains on, or ``"from_trainer"`` to read the train
            dataloader's dataset; eval prompts found in them trigger a one-time warning.
        progress: print each finished evaluator's values through the progress bar (so a
            TQDM or Rich bar stays intact), and a line every ``progress_every_s`` seconds
            while a round runs (samples finished so far, evaluators still running).
        sampling_options: keyword arguments for the live sampling client,
            ``SamplingClient.from_module(model, tokenizer, **sampling_options)``, e.g.
            ``{"max_batch_size": 64, "compute_dtype": torch.bfloat16}`` for faster rounds.

    Logged at step N on every logger: each metric, ``eval/failures`` (count) and
    ``eval/time_s``. Metrics also land in ``trainer.callback_metrics`` (usable by
    ``ModelCheckpoint(monitor=...)`` / ``EarlyStopping``), each round is appended to
    ``<log_dir>/eval_results.jsonl``, and the latest round is stored in every checkpoint
    under ``checkpoint["eval_results"]``.

    Example:
        >>> EvalCallback(evaluator_builders=[my_builder], eval_every=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        evaluator_builders: Sequence[EvaluatorBuilder] = (),
        eval_every: int = 10,
        infrequent_evaluator_builders: Sequence[EvaluatorBuilder] = (),
        infrequent_eval_every: int = 100,
        *,
        eval_on_checkpoint: bool = False,
        evaluator_timeout_s: float | None = None,
        fail_fast: bool = False,
        training_texts: Iterable[str] | Literal["from_trainer"] | None = None,
        progress: bool = True,
        progress_every_s: float = 15.0,
        sampling_options: dict[str, Any] | None = None,
    ):
        for arg, value in (
            ("eval_every", eval_every),
            ("infrequent_eval_every", infrequent_eval_every),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"{arg}={value!r}: expected a whole number of optimizer steps >= 0 "
                    "(0 disables that list)."
                )
        for arg, builders in (
            ("evaluator_builders", evaluator_builders),
            ("infrequent_evaluator_builders", infrequent_evaluator_builders),
        ):
            for builder in builders:
                if isinstance(builder, (SamplingClientEvaluator, TrainingClientEvaluator)):
                    raise TypeError(
                        f"{arg} contains the evaluator {builder!r}, not a builder; pass a "
                        "zero-argument callable returning it, e.g. `lambda: evaluator`, the "
                        "class, or functools.partial(EvaluatorClass, ...)."
                    )
                if not callable(builder):
                    raise TypeError(
                        f"{arg} contains {builder!r}, which is not callable; pass zero-argument "
                        "callables returning evaluators, e.g. a class or functools.partial(...)."
                    )
        if evaluator_timeout_s is not None and evaluator_timeout_s <= 0:
            raise ValueError(
                f"evaluator_timeout_s={evaluator_timeout_s!r}: expected seconds > 0, or None."
            )
        if progress_every_s <= 0:
            raise ValueError(f"progress_every_s={progress_every_s!r}: expected seconds > 0.")
        if isinstance(training_texts, str) and training_texts != "from_trainer":
            raise ValueError(
                f"training_texts={training_texts!r}: expected an iterable of strings, "
                "'from_trainer', or None."
            )
        self.builders = {
            "regular": list(evaluator_builders),
            "infrequent": list(infrequent_evaluator_builders),
        }
        self.every = {"regular": eval_every, "infrequent": infrequent_eval_every}
        self.eval_on_checkpoint = eval_on_checkpoint
        self.evaluator_timeout_s = evaluator_timeout_s
        self.fail_fast = fail_fast
        self.training_texts = training_texts
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.sampling_options = _checked_sampling_options(sampling_options or {})
        self.last_evaluated = {name: -1 for name in LISTS}
        self.latest: RoundRecord | None = None
        self._slots: dict[str, list[EvaluatorSlot]] | None = None
        self._clients: LiveClients | None = None
        self._log_dir: Path | None = None
        self._results: ResultsFile | None = None
        self._held_out_checked = False
        self._hook_failures: list[tuple[str, str, BaseException]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            eval_every=self.every["regular"], infrequent_eval_every=self.every["infrequent"]
        )

    # ---- Lightning hooks ----------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._enabled_lists():
            return
        _reject_sharded(trainer)
        self._name_slots()
        evaluators = [s.evaluator for slots in self._slots.values() for s in slots]
        check_module(
            pl_module,
            needs_sampling=any(isinstance(e, SamplingClientEvaluator) for e in evaluators),
            needs_training=any(isinstance(e, TrainingClientEvaluator) for e in evaluators),
        )
        self._clients = LiveClients(pl_module, self.sampling_options)
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self._results = ResultsFile(self._log_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_held_out(trainer, pl_module)
        self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        if self.eval_on_checkpoint and self._clients is not None and _step_checkpoint_due(trainer):
            # ModelCheckpoint runs after us and reads its monitor before saving: evaluate now.
            self._evaluate(trainer, pl_module, self._not_evaluated_at(trainer.global_step))
        self._maybe_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._evaluate(trainer, pl_module, self._not_evaluated_at(step))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.eval_on_checkpoint and self._clients is not None:
            self._evaluate(trainer, pl_module, self._not_evaluated_at(trainer.global_step))
            callbacks_state = checkpoint.get("callbacks", {})
            if self.state_key in callbacks_state:
                callbacks_state[self.state_key] = self.state_dict()
        if self.latest is not None:
            checkpoint[CHECKPOINT_KEY] = self.latest.to_json()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close_clients()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close_clients()

    def _close_clients(self) -> None:
        if self._clients is not None:
            self._clients.close()
            self._clients = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_evaluated": dict(self.last_evaluated),
            "latest": None if self.latest is None else self.latest.to_json(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_evaluated.update(state_dict["last_evaluated"])
        latest = state_dict.get("latest")
        self.latest = None if latest is None else RoundRecord.from_json(latest)

    # ---- schedule ---------------------------------------------------------------------------

    def _enabled_lists(self) -> list[str]:
        return [name for name in LISTS if self.every[name] > 0 and self.builders[name]]

    def _not_evaluated_at(self, step: int) -> list[str]:
        return [name for name in self._enabled_lists() if self.last_evaluated[name] != step]

    def _maybe_evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Runs the lists whose interval boundary was crossed since their last round.

        Counting from each list's last *finished* round means a round interrupted by Ctrl-C
        is still due after resuming from the checkpoint saved on the interrupt.
        """
        if self._clients is None:
            return
        step = trainer.global_step
        due = [
            name
            for name in self._not_evaluated_at(step)
            if step // self.every[name] > self.last_evaluated[name] // self.every[name]
        ]
        self._evaluate(trainer, pl_module, due)

    # ---- a round ----------------------------------------------------------------------------

    def _name_slots(self) -> None:
        if self._slots is None:
            enabled = self._enabled_lists()
            named = name_slots([b for name in enabled for b in self.builders[name]])
            self._slots = {}
            for name in enabled:
                count = len(self.builders[name])
                self._slots[name], named = named[:count], named[count:]

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, lists: list[str]
    ) -> None:
        if not lists or self._clients is None or self._slots is None:
            return
        step = trainer.global_step
        slots = [slot for name in lists for slot in self._slots[name]]
        console = _RoundConsole(
            _printer(trainer) if self.progress else None, step, slots, self._clients
        )
        console.started(lists)
        start = time.perf_counter()
        with _preserved_state(pl_module):
            outcome = run_sync(
                run_round(
                    slots,
                    self._clients,
                    timeout_s=self.evaluator_timeout_s,
                    context={"log_dir": self._log_dir, "step": step},
                    on_done=console.evaluator_done,
                    on_progress=console.still_running,
                    progress_every_s=self.progress_every_s,
                )
            )
            timed_out = any(f["kind"] == "timeout" for f in outcome.failures)
            self._clients.settle(restart_sampling=timed_out)
        for name, message, error in self._hook_failures:  # from the held-out guard
            outcome.fail(name, "hook", message, error)
        self._hook_failures = []
        record = RoundRecord(
            step=step,
            metrics=dict(sorted(outcome.metrics.items())),
            failures=outcome.failures,
            time_s=time.perf_counter() - start,
            lists=list(lists),
        )
        # Every rank evaluated; rank 0's numbers are the ones everybody keeps and logs.
        record = RoundRecord.from_json(trainer.strategy.broadcast(record.to_json(), src=0))
        for name in lists:
            self.last_evaluated[name] = step
        self.latest = record
        self._report_failures(trainer, outcome, record)
        self._publish(trainer, record, outcome)
        if self.fail_fast and record.failures:
            if outcome.errors and outcome.errors[0] is not None:
                raise outcome.errors[0]  # the first failure's own exception
            first = record.failures[0]
            raise RuntimeError(
                f"evaluator {first['evaluator']!r} failed ({first['kind']}): {first['message']}"
            )

    def _report_failures(
        self, trainer: pl.Trainer, outcome: RoundOutcome, record: RoundRecord
    ) -> None:
        if not trainer.is_global_zero:
            return
        for failure in record.failures:
            log.warning(
                "evaluator %r failed at step %d (%s): %s",
                failure["evaluator"],
                record.step,
                failure["kind"],
                failure["message"],
            )
        for text in outcome.tracebacks():
            log.warning("evaluator traceback at step %d:\n%s", record.step, text)

    def _publish(self, trainer: pl.Trainer, record: RoundRecord, outcome: RoundOutcome) -> None:
        metrics = {
            **record.metrics,
            "eval/failures": float(len(record.failures)),
            "eval/time_s": record.time_s,
        }
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record.step)
        if not trainer.is_global_zero:
            return
        if self._results is not None:
            self._results.append(record)
        for logger in trainer.loggers:
            add_text = getattr(logger.experiment, "add_text", None)
            if not callable(add_text):
                continue
            for name, pairs in outcome.transcripts.items():
                text = "\n\n---\n\n".join(
                    f"**prompt:** {prompt}\n\n**response:** {response}"
                    for prompt, response in pairs
                )
                add_text(f"eval/{name}/samples", text, global_step=record.step)

    # ---- held-out guard ---------------------------------------------------------------------

    def _check_held_out(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._held_out_checked or self.training_texts is None or self._slots is None:
            return
        self._held_out_checked = True
        if not trainer.is_global_zero:  # one warning per run: only rank 0 reads the data
            return
        prompts: list[str] = []
        for slots in self._slots.values():
            for slot in slots:
                if slot.evaluator is None:
                    continue
                try:
                    prompts.extend(slot.evaluator.eval_prompts())
                except Exception as error:  # counted in the next round, never fatal
                    log.warning(
                        "evaluator %r: eval_prompts() raised %r; its prompts are not "
                        "checked against the training data",
                        slot.name,
                        error,
                    )
                    self._hook_failures.append(
                        (slot.name, f"eval_prompts() raised {error!r}", error)
                    )
        if not prompts:
            return
        if self.training_texts == "from_trainer":
            texts = [
                text
                for loader in _dataloaders(trainer.train_dataloader)
                for text in texts_from_dataset(
                    loader.dataset, getattr(pl_module, "tokenizer", None)
                )
            ]
        else:
            texts = list(self.training_texts)
        overlap = find_overlap(prompts, texts)
        if overlap.found:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"EvalCallback: {overlap.found} of {overlap.checked} eval prompts occur in the "
                f"training data (e.g. {overlap.example[:200]!r}); those scores measure "
                "memorization. Evaluate on held-out data."
            )


def _dataloaders(loaders: Any) -> list[Any]:
    if loaders is None:
        return []
    if hasattr(loaders, "dataset"):
        return [loaders]
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return [loader for item in loaders for loader in _dataloaders(item)]
    return _dataloaders(getattr(loaders, "iterables", None))


def _reject_sharded(trainer: pl.Trainer) -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise RuntimeError(
            f"EvalCallback does not support the sharded strategy {type(strategy).__name__}: "
            "each rank holds only part of the weights, so it cannot sample from the model. "
            "Use strategy='ddp' (or a single device), or evaluate saved checkpoints offline "
            "with `python -m bios_callbacks.eval.run_inspect_evals`."
        )


class _RoundConsole:
    """What a round prints: a start line, each evaluator's values as it finishes, and a
    heartbeat with the samples finished so far while long rounds run."""

    def __init__(
        self, emit: Any, step: int, slots: Sequence[EvaluatorSlot], clients: LiveClients
    ) -> None:
        self.emit, self.step, self.clients = emit, step, clients
        self.pending = [slot.name for slot in slots]
        self.base = clients.sampling_progress()

    def started(self, lists: Sequence[str]) -> None:
        if self.emit:
            count = len(self.pending)
            self.emit(f"[eval] step {self.step}: running {count} evaluator(s) ({', '.join(lists)})")

    def evaluator_done(self, name: str, seconds: float, values: dict[str, float] | None) -> None:
        self.pending.remove(name)
        if not self.emit:
            return
        shown = "FAILED" if values is None else _format_values(values)
        self.emit(f"[eval] step {self.step} {name}: {shown} ({seconds:.1f}s)")

    def still_running(self, seconds: float) -> None:
        if not self.emit:
            return
        finished, requested = self.clients.sampling_progress()
        samples = f"{finished - self.base[0]}/{requested - self.base[1]} samples"
        self.emit(
            f"[eval] step {self.step}: {seconds:.0f}s, {samples} done, "
            f"waiting for {', '.join(self.pending)}"
        )


def _format_values(values: dict[str, float]) -> str:
    """``accuracy=0.875 scored=16``: every value, compactly."""
    return " ".join(f"{key}={value:.4g}" for key, value in values.items()) or "(no values)"


def _printer(trainer: pl.Trainer) -> Any:
    if not trainer.is_global_zero:
        return None
    bar = trainer.progress_bar_callback
    return bar.print if bar is not None else print


@contextmanager
def _preserved_state(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for a round; afterwards training flags and RNG states are as before."""
    python_rng = random.getstate()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        with evaluation_mode(module):
            yield
    finally:
        random.setstate(python_rng)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def _step_checkpoint_due(trainer: pl.Trainer) -> bool:
    """True when a `ModelCheckpoint(every_n_train_steps=N)` saves after this batch."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    step = trainer.global_step
    return any(
        isinstance(cb, ModelCheckpoint)
        and cb._every_n_train_steps > 0
        and step % cb._every_n_train_steps == 0
        for cb in trainer.checkpoint_callbacks
    )


def _checked_sampling_options(options: dict[str, Any]) -> dict[str, Any]:
    """Fails at construction, not in every round, when a key is not a client option."""
    import inspect

    from bios_callbacks.sampling.client import SamplingClient

    valid = [
        name
        for name in inspect.signature(SamplingClient.from_module).parameters
        if name not in {"cls", "model", "tokenizer"}
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"sampling_options has unknown key(s) {unknown}; valid keys: {', '.join(valid)} "
            "(the keyword arguments of SamplingClient.from_module)."
        )
    return dict(options)
