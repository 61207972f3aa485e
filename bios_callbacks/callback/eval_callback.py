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

Background rounds (``async_infrequent=True``). An infrequent round due at step N copies the
weights (`snapshot.py`) and runs on the copy in a worker thread while training goes on; it is
logged at step N when it finishes, from the training thread (Lightning loggers are not
thread-safe), on every logger, once. One round is in flight at a time: when the next is due
before the last finished, training waits for the last first. Pending rounds finish before any
checkpoint is saved, before a ``ModelCheckpoint(every_n_train_steps=...)`` reads its monitor,
at the end of training and when training stops on an error, Ctrl-C or SIGTERM, so every
checkpoint's schedule state counts exactly the rounds that were logged. A round due at the
step of such a checkpoint, or at the last step, runs synchronously on the live weights, since
training would wait for it anyway.

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

import random
import time
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from bios_callbacks.callback.background import BackgroundRounds
from bios_callbacks.callback.console import RoundConsole, printer
from bios_callbacks.callback.held_out import HookFailure, check_held_out
from bios_callbacks.callback.lightning_private import step_checkpoint_due
from bios_callbacks.callback.live_clients import (
    LiveClients,
    can_split,
    check_module,
    check_shardable,
    check_snapshot_module,
)
from bios_callbacks.callback.publish import publish, report_failures
from bios_callbacks.callback.results import ResultsFile, RoundRecord
from bios_callbacks.callback.round import EvaluatorSlot, RoundOutcome, name_slots, run_round
from bios_callbacks.callback.run_sync import run_sync
from bios_callbacks.callback.schedule import EvaluatorList, check_interval
from bios_callbacks.distributed.rounds import SplitRounds
from bios_callbacks.evaluators.base import (
    EvaluatorBuilder,
    SamplingClientEvaluator,
    TrainingClientEvaluator,
    client_kind,
)
from bios_callbacks.models.train_flags import evaluation_mode

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
            ``{"max_batch_size": 128, "compute_dtype": torch.bfloat16}`` for faster rounds.
        async_infrequent: run infrequent rounds in the background on a copy of the weights of
            their step while training goes on (regular rounds stay synchronous). Needs the
            module's ``model`` + ``tokenizer``. Costs one copy of the trainable weights, made
            once and refilled for each round (frozen ones, e.g. a LoRA run's base model, are
            shared), plus the background round's own KV cache. Unseeded sampling there draws
            its seeds from a generator seeded by the step, not from torch's global one, so
            training's random numbers are as without rounds; an evaluator that draws from a
            global generator itself (``random``, ``torch.rand``) should use its own.
        snapshot_device: where that copy lives and the background round computes; None (the
            default) is the model's own device, so rounds run as fast as synchronous ones;
            ``"cpu"`` keeps GPU memory free at the price of slower rounds (then frozen weights
            are copied too).

    Logged at step N on every logger: each metric, ``eval/failures`` (count) and
    ``eval/time_s`` (``eval/background_failures`` and ``eval/background_time_s`` for a
    background round). Metrics also land in ``trainer.callback_metrics`` (usable by
    ``ModelCheckpoint(monitor=...)`` / ``EarlyStopping``), each round is appended to
    ``<log_dir>/eval_results.jsonl``, and the newest step's round is stored in every
    checkpoint under ``checkpoint["eval_results"]``.

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
        async_infrequent: bool = False,
        snapshot_device: str | torch.device | None = None,
    ):
        self.lists = [
            EvaluatorList(
                "regular",
                _checked_builders("evaluator_builders", evaluator_builders),
                check_interval("eval_every", eval_every),
            ),
            EvaluatorList(
                "infrequent",
                _checked_builders("infrequent_evaluator_builders", infrequent_evaluator_builders),
                check_interval("infrequent_eval_every", infrequent_eval_every),
            ),
        ]
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
        self.eval_on_checkpoint = eval_on_checkpoint
        self.evaluator_timeout_s = evaluator_timeout_s
        self.fail_fast = fail_fast
        self.training_texts = training_texts
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.sampling_options = _checked_sampling_options(sampling_options or {})
        self.async_infrequent = async_infrequent
        self.snapshot_device = _checked_snapshot_device(snapshot_device, async_infrequent)
        self.latest: RoundRecord | None = None
        self._named = False
        self._clients: LiveClients | None = None
        self._log_dir: Path | None = None
        self._results: ResultsFile | None = None
        self._held_out_checked = False
        self._hook_failures: list[HookFailure] = []
        self._background: BackgroundRounds | None = None
        self._split: SplitRounds | None = None

    @property
    def state_key(self) -> str:
        regular, infrequent = self.lists
        return self._generate_state_key(
            eval_every=regular.every, infrequent_eval_every=infrequent.every
        )

    @property
    def last_evaluated(self) -> dict[str, int]:
        """Each list's last evaluated step (-1: none yet)."""
        return {evaluators.name: evaluators.last_evaluated for evaluators in self.lists}

    @property
    def background_pending(self) -> int | None:
        """The step of the background round in flight, None when there is none."""
        return None if self._background is None else self._background.pending_step

    def finish_background_round(self, trainer: pl.Trainer) -> None:
        """Waits for the background round in flight, if any, and logs it now, at its own
        step. Checkpoints and the end of training do this already; call it before reading
        ``trainer.callback_metrics`` for something that must include that round.

        Example:
            >>> callback.finish_background_round(trainer)  # doctest: +SKIP
        """
        self._finish_background(trainer)

    # ---- Lightning hooks ----------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not self._enabled():
            return
        _sharded(trainer)  # refuses a strategy rounds cannot run under before anything starts
        self._name_slots()
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            self._results = ResultsFile(self._log_dir)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Checks the module and sets up its clients here, after `configure_model` (where a
        module may create its `model`) and the strategy's wrapping or sharding."""
        if not self._enabled():
            return
        sharded = _sharded(trainer)
        kinds = {client_kind(s.evaluator) for s in self._slots() if s.evaluator is not None}
        check_module(
            pl_module, needs_sampling="sampling" in kinds, needs_training="training" in kinds
        )
        if sharded:
            check_shardable(pl_module, type(trainer.strategy).__name__, self.async_infrequent)
        self._clients = LiveClients(pl_module, self.sampling_options)
        if trainer.world_size > 1 and can_split(pl_module) and self._split is None:
            self._split = SplitRounds(
                pl_module.model,
                pl_module.tokenizer,
                sharded=sharded,
                sampling_options=self.sampling_options,
            )
        if self.async_infrequent and self.lists[1].enabled and self._background is None:
            check_snapshot_module(pl_module)
            self._background = BackgroundRounds(
                pl_module.tokenizer,
                timeout_s=self.evaluator_timeout_s,
                sampling_options=self.sampling_options,
                snapshot_device=self.snapshot_device,
                progress_every_s=self.progress_every_s,
                log_dir=self._log_dir,
                verbose=self.progress and trainer.is_global_zero,
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_held_out(trainer, pl_module)
        self._maybe_evaluate(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        background = self._background
        if background is not None:
            self._print_background_lines(trainer)
            if self._background_ready(trainer):
                self._finish_background(trainer)
        checkpoint_due = (
            (self.eval_on_checkpoint or background is not None)
            and self._clients is not None
            and step_checkpoint_due(trainer)
        )
        if checkpoint_due:
            # ModelCheckpoint runs after us and reads its monitor before saving: results now.
            self._finish_background(trainer)
            if self.eval_on_checkpoint:
                self._evaluate(trainer, pl_module, self._not_evaluated_at(trainer.global_step))
        last_step = 0 < trainer.max_steps <= trainer.global_step
        self._maybe_evaluate(trainer, pl_module, background=not (checkpoint_due or last_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish_background(trainer)
        self._evaluate(trainer, pl_module, self._not_evaluated_at(trainer.global_step))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._finish_background(trainer)
        if self.eval_on_checkpoint and self._clients is not None:
            self._evaluate(trainer, pl_module, self._not_evaluated_at(trainer.global_step))
        callbacks_state = checkpoint.get("callbacks", {})
        if self.state_key in callbacks_state:  # taken before this hook: the rounds since count
            callbacks_state[self.state_key] = self.state_dict()
        if self.latest is not None:
            checkpoint[CHECKPOINT_KEY] = self.latest.to_json()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._close_clients()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # A checkpoint saved on the way out (Ctrl-C, SIGTERM, an error) must count the
        # pending round as logged, so it is logged first. Lightning ignores further Ctrl-C now.
        try:
            self._finish_background(trainer, raise_failures=False)
        finally:
            self._close_clients()

    def _close_clients(self) -> None:
        if self._clients is not None:
            self._clients.close()
            self._clients = None
        if self._background is not None:
            self._background.close()
            self._background = None
        if self._split is not None:
            self._split.close()
            self._split = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_evaluated": self.last_evaluated,
            "latest": None if self.latest is None else self.latest.to_json(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        last = state_dict["last_evaluated"]
        for evaluators in self.lists:
            evaluators.last_evaluated = int(last.get(evaluators.name, -1))
        latest = state_dict.get("latest")
        self.latest = None if latest is None else RoundRecord.from_json(latest)

    # ---- schedule ---------------------------------------------------------------------------

    def _enabled(self) -> list[EvaluatorList]:
        return [evaluators for evaluators in self.lists if evaluators.enabled]

    def _slots(self, lists: Sequence[EvaluatorList] | None = None) -> list[EvaluatorSlot]:
        return [slot for evaluators in (lists or self.lists) for slot in evaluators.slots]

    def _not_evaluated_at(self, step: int) -> list[EvaluatorList]:
        return [e for e in self._enabled() if e.last_evaluated != step]

    def _maybe_evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, background: bool = True
    ) -> None:
        if self._clients is None:
            return
        step = trainer.global_step
        due = [e for e in self.lists if e.due_now(step)]
        infrequent = self.lists[1]
        if background and self._background is not None and infrequent in due:
            self._start_background(trainer, pl_module)
            due.remove(infrequent)
        self._evaluate(trainer, pl_module, due)

    # ---- background rounds ------------------------------------------------------------------

    def _start_background(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Snapshots the weights and starts the infrequent round of this step on them."""
        assert self._background is not None
        step, pending = trainer.global_step, self._background.pending_step
        if pending is not None:
            self._say(
                trainer,
                f"[eval] step {step}: training waits for the background round of step {pending} "
                "to finish before starting the next (a larger infrequent_eval_every avoids it)",
            )
            self._finish_background(trainer)
        infrequent = self.lists[1]
        self._background.submit(pl_module.model, step, infrequent.slots)
        infrequent.last_evaluated = step
        self._print_background_lines(trainer)  # its start line, in order with training's

    def _background_ready(self, trainer: pl.Trainer) -> bool:
        """Whether the pending round finished, on every rank (so all publish it together)."""
        assert self._background is not None
        if self._background.pending_step is None:
            return False
        ready = self._background.ready()
        if trainer.world_size > 1:
            ready = trainer.strategy.reduce_boolean_decision(ready, all=True)
        return ready

    def _finish_background(self, trainer: pl.Trainer, *, raise_failures: bool = True) -> None:
        """Waits for the pending background round, if any, and publishes it at its step."""
        if self._background is None or self._background.pending_step is None:
            return
        finished = self._background.wait()
        self._print_background_lines(trainer)
        assert finished is not None
        self._finish(
            trainer,
            finished.outcome,
            step=finished.step,
            lists=[self.lists[1]],
            time_s=finished.time_s,
            background=True,
            raise_failures=raise_failures,
        )

    def _print_background_lines(self, trainer: pl.Trainer) -> None:
        assert self._background is not None
        for line in self._background.lines():
            self._say(trainer, line)

    def _say(self, trainer: pl.Trainer, line: str) -> None:
        emit = printer(trainer) if self.progress else None
        if emit is not None:
            emit(line)

    # ---- a round ----------------------------------------------------------------------------

    def _name_slots(self) -> None:
        """Names every builder's slot once, across both lists, so names never clash."""
        if self._named:
            return
        self._named = True
        enabled = self._enabled()
        named = name_slots([b for evaluators in enabled for b in evaluators.builders])
        for evaluators in enabled:
            count = len(evaluators.builders)
            evaluators.slots, named = named[:count], named[count:]

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, lists: list[EvaluatorList]
    ) -> None:
        if not lists or self._clients is None:
            return
        if self.lists[1] in lists:  # the infrequent evaluators may be busy in the background
            self._finish_background(trainer)
        step = trainer.global_step
        slots = self._slots(lists)
        names = [evaluators.name for evaluators in lists]
        console = RoundConsole(
            printer(trainer) if self.progress else None,
            step,
            [slot.name for slot in slots],
            self._clients,
        )
        console.started(names)
        start = time.perf_counter()

        def make_round(clients: LiveClients) -> Coroutine[Any, Any, RoundOutcome]:
            console.follow(clients)
            return run_round(
                slots,
                clients,
                timeout_s=self.evaluator_timeout_s,
                context={"log_dir": self._log_dir, "step": step},
                on_done=console.evaluator_done,
                on_progress=console.still_running,
                progress_every_s=self.progress_every_s,
            )

        work = None
        with _preserved_state(pl_module):
            if self._split is not None:  # rank 0 evaluates, every rank decodes and scores
                outcome = self._split.run(pl_module, make_round, root=trainer.strategy.model)
                work = self._split.served
            else:
                outcome = run_sync(make_round(self._clients))
                self._clients.settle()
        time_s = time.perf_counter() - start
        self._finish(trainer, outcome, step=step, lists=lists, time_s=time_s, work=work)

    def _finish(
        self,
        trainer: pl.Trainer,
        outcome: RoundOutcome,
        *,
        step: int,
        lists: list[EvaluatorList],
        time_s: float,
        background: bool = False,
        raise_failures: bool = True,
        work: list[int] | None = None,
    ) -> None:
        """Records a finished round as evaluated and publishes it at `step`."""
        for name, message, error in self._hook_failures:  # from the held-out guard
            outcome.fail(name, "hook", message, error)
        self._hook_failures = []
        record = RoundRecord(
            step=step,
            metrics=dict(sorted(outcome.metrics.items())),
            failures=outcome.failures,
            time_s=time_s,
            lists=[evaluators.name for evaluators in lists],
            background=background,
            work=work,
        )
        # Rank 0's numbers are the ones everybody keeps and logs.
        record = RoundRecord.from_json(trainer.strategy.broadcast(record.to_json(), src=0))
        for evaluators in lists:
            evaluators.last_evaluated = max(evaluators.last_evaluated, step)
        if self.latest is None or record.step >= self.latest.step:
            self.latest = record
        report_failures(trainer, record, outcome.tracebacks())
        publish(trainer, record, transcripts=outcome.transcripts, results=self._results)
        if raise_failures and self.fail_fast and record.failures:
            if outcome.errors and outcome.errors[0] is not None:
                raise outcome.errors[0]  # the first failure's own exception
            first = record.failures[0]
            raise RuntimeError(
                f"evaluator {first['evaluator']!r} failed ({first['kind']}): {first['message']}"
            )

    def _check_held_out(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._held_out_checked or self.training_texts is None or not self._named:
            return
        self._held_out_checked = True
        if trainer.is_global_zero:  # one warning per run: only rank 0 reads the data
            self._hook_failures += check_held_out(
                self._slots(), self.training_texts, trainer, pl_module
            )


def _checked_builders(arg: str, builders: Sequence[EvaluatorBuilder]) -> list[EvaluatorBuilder]:
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
    return list(builders)


def _sharded(trainer: pl.Trainer) -> bool:
    """Whether each rank holds only shards of the weights (then rounds run in lockstep);
    a RuntimeError naming the alternatives for a strategy rounds cannot run under."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        raise RuntimeError(
            "EvalCallback does not support DeepSpeedStrategy: ZeRO keeps parameters "
            "partitioned outside the module's own forward pass, so the sampling engine cannot "
            "run it step by step on every rank. Use strategy='ddp', FSDP (strategy='fsdp', on "
            "GPUs), or ModelParallelStrategy with fully_shard in configure_model (FSDP2), or "
            "evaluate saved checkpoints with `python -m bios_callbacks.eval.run_inspect_evals`."
        )
    if isinstance(strategy, ModelParallelStrategy) and _tensor_parallel_size(strategy) > 1:
        raise RuntimeError(
            "EvalCallback does not support tensor parallelism (ModelParallelStrategy with "
            f"tensor_parallel_size={_tensor_parallel_size(strategy)}): its ranks must all feed "
            "the same inputs, while rounds give each rank different rows. Use "
            "ModelParallelStrategy(data_parallel_size=<processes>, tensor_parallel_size=1) "
            "with fully_shard (FSDP2), or evaluate saved checkpoints with "
            "`python -m bios_callbacks.eval.watch`."
        )
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def _tensor_parallel_size(strategy: Any) -> int:
    """The tensor-parallel dimension of a set-up ModelParallelStrategy's device mesh (1 when
    it has none yet)."""
    try:
        return int(strategy.device_mesh["tensor_parallel"].size())
    except (AttributeError, KeyError, RuntimeError, AssertionError):
        return 1


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


def _checked_snapshot_device(device: Any, async_infrequent: bool) -> torch.device | None:
    """`device` as a torch device; a ValueError when it is not one or has no use."""
    if device is None:
        return None
    if not async_infrequent:
        raise ValueError(
            f"snapshot_device={device!r} only applies to background rounds: set "
            "async_infrequent=True too, or leave snapshot_device unset."
        )
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"snapshot_device={device!r}: expected a torch device such as 'cpu' or 'cuda:0' "
            f"({error}), or None for the model's own device."
        ) from None


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
