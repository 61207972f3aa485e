"""Trainer configs: the guide's keys plus model, data and optimisation settings.

A config is a dataclass; build it from keyword arguments, a dict (unknown keys are an error that
lists the valid ones) or `key=value` command-line words.

Example:
    >>> from trainers.config import SFTConfig
    >>> cfg = SFTConfig.from_dict({"train_data": "train.jsonl", "steps": 20, "eval_every": 5})
    >>> cfg.steps, cfg.eval_every
    (20, 5)
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import secrets
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bios_callbacks.checkpoints import checkpoint_dir, checkpoint_root
from bios_callbacks.key_value import parse_words
from bios_callbacks.models import EMBEDDED_MODEL

C = TypeVar("C", bound="TrainConfig")
SFT_EVAL_EVERY = 10
"""SFT's default `eval_every`: the test loss every 10 steps, as before it was an evaluator."""


@dataclass
class TrainConfig:
    """Settings shared by the SFT and RL trainers.

    Attributes:
        model_name: hub id, the embedded model, a local HF dir, a checkpoint dir or `bios://run/name`.
        renderer_name: chat format; default: the model's usual one (`chatml` for SmolLM2).
        evaluator_builders: regular evaluators (zero-argument callables), run every `eval_every`.
        eval_every: optimizer steps (SFT) or RL iterations between regular evaluations; 0 disables.
            SFT's default is 10, and its test loss is one of the regular evaluators.
        infrequent_evaluator_builders: expensive evaluators, run every `infrequent_eval_every`.
        infrequent_eval_every: interval of the expensive evaluators; 0 disables.
        async_infrequent: run the infrequent rounds in the background on a copy of their step's
            weights while training goes on (`EvalCallback(async_infrequent=True)`).
        snapshot_device: where that copy lives and the background rounds compute (e.g. "cpu");
            default: the model's own device. Needs `async_infrequent`.
        logger: where metrics go: "tensorboard" (default), "wandb", "mlflow" or "csv" (see
            `trainers.policy.make_logger` for where each writes).
        steps: optimizer steps (SFT) or RL iterations to run in total.
        batch_size: conversations (SFT) or prompts (RL) per step.
        learning_rate: AdamW learning rate (constant after `warmup_steps`).
        lora_rank: 0 trains all weights; > 0 trains a LoRA adapter of this rank (needs `peft`).
        run_name: the run's directory name under `$BIOS_CHECKPOINT_ROOT` (root `./runs`); default
            `<kind>-<start time>-<random>`, or the resumed checkpoint's run (see `resume_from`).
        log_dir: run directory for TensorBoard logs, `eval_results.jsonl` and checkpoints; default
            `$BIOS_CHECKPOINT_ROOT/<run_name>`, so checkpoints get `bios://` paths.
        save_every: save a checkpoint every this many steps (0: only at the end).
        resume_from: a checkpoint written by this trainer (dir or `bios://`) to continue from.
            Without `run_name` or `log_dir` the run continues in that checkpoint's run directory
            (new TensorBoard event files beside the old ones, the same results file and
            checkpoints), which must be the run's latest checkpoint; with either, the resumed
            run is a new run (a branch) in that, unused, directory.
        keep_trainer_states: how many of the newest checkpoints keep `trainer_state.ckpt`
            (optimizer state, needed to resume; twice the weights' size with AdamW); older
            checkpoints keep their weights. 0 keeps it everywhere.
    """

    model_name: str = EMBEDDED_MODEL
    renderer_name: str | None = None
    evaluator_builders: list[Callable[[], Any]] = field(default_factory=list)
    eval_every: int = 0
    infrequent_evaluator_builders: list[Callable[[], Any]] = field(default_factory=list)
    infrequent_eval_every: int = 0
    async_infrequent: bool = False
    snapshot_device: str | None = None
    logger: str = "tensorboard"
    steps: int = 100
    batch_size: int = 4
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_length: int = 512
    lora_rank: int = 0
    lora_alpha: float = 32.0
    run_name: str | None = None
    log_dir: str | None = None
    save_every: int = 0
    seed: int = 0
    resume_from: str | None = None
    keep_trainer_states: int = 1

    def __post_init__(self) -> None:
        for name in (
            "eval_every",
            "infrequent_eval_every",
            "save_every",
            "warmup_steps",
            "keep_trainer_states",
        ):
            _check_int(self, name, minimum=0, hint="use 0 to disable it")
        for name in ("steps", "batch_size", "max_length"):
            _check_int(self, name, minimum=1)
        _check_int(self, "lora_rank", minimum=0, hint="use 0 for full fine-tuning")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r}: expected a positive number.")
        for name in ("evaluator_builders", "infrequent_evaluator_builders"):
            builders = getattr(self, name)
            if callable(builders) or isinstance(builders, str):
                builders = [builders]
            builders = [_import_object(b) if isinstance(b, str) else b for b in builders]
            for b in builders:
                if not callable(b):
                    raise TypeError(
                        f"{name} entry {b!r} is not callable: expected zero-argument callables "
                        "that return an evaluator (or 'module:attribute' strings naming one)."
                    )
            setattr(self, name, builders)
        _check_background(self)
        _check_logger(self.logger)
        if self.renderer_name is not None:
            from bios_callbacks.renderers import renderer_names

            if self.renderer_name not in renderer_names():
                raise ValueError(
                    f"renderer_name={self.renderer_name!r}: expected one of {renderer_names()}, "
                    "or leave it unset for the model's usual format."
                )
        resumed = None
        if self.resume_from and self.run_name is None and self.log_dir is None:
            resumed = resumed_run_dir(self.resume_from)
        if resumed is not None:
            self.run_name, self.log_dir = resumed.name, str(resumed)
        if self.run_name is None:
            self.run_name = default_run_name(self.kind())
        if self.log_dir is None:
            self.log_dir = str(checkpoint_root() / self.run_name)

    @classmethod
    def kind(cls) -> str:
        """Short name of the trainer ("sft" or "rl"), used in default run names."""
        return "train"

    @classmethod
    def size_keys(cls) -> tuple[str, ...]:
        """The keys that set how much memory a training step needs."""
        return ("batch_size", "max_length")

    @classmethod
    def keys(cls) -> list[str]:
        """All valid config keys."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Builds a config from a mapping; unknown keys raise an error listing the valid ones."""
        cls._check_keys(values)
        return cls(**values)

    @classmethod
    def _check_keys(cls, values: Mapping[str, Any]) -> None:
        unknown = sorted(set(values) - set(cls.keys()))
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} key(s) {unknown}. Valid keys: {', '.join(cls.keys())}."
            )

    @classmethod
    def from_cli(cls: type[C], argv: Sequence[str]) -> C:
        """Builds a config from `key=value` words, as in `python -m trainers.sft steps=10`."""
        return cls.from_dict(cls.parse_cli(argv))

    @classmethod
    def parse_cli(cls, argv: Sequence[str]) -> dict[str, Any]:
        """The `key=value` words as a dict of values of each key's type; unknown keys and
        values that do not fit the type are errors.

        Example:
            >>> SFTConfig.parse_cli(["run_name=007", "steps=20", "renderer_name=none"])
            {'run_name': '007', 'steps': 20, 'renderer_name': None}
        """
        return parse_words(cls, argv)

    @property
    def run_dir(self) -> Path:
        """The run directory (same as `log_dir`)."""
        return Path(str(self.log_dir))


def _check_int(cfg: TrainConfig, name: str, *, minimum: int, hint: str = "") -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f"; {hint}" if hint else ""
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}{extra}.")


LOGGERS = {"tensorboard": None, "wandb": "wandb", "mlflow": "mlflow", "csv": None}
"""The `logger=` choices and the package each needs beyond Lightning's own."""


def _check_logger(name: str) -> None:
    if name not in LOGGERS:
        raise ValueError(f"logger={name!r}: expected one of {list(LOGGERS)}.")
    package = LOGGERS[name]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(
            f"logger={name} needs the {package} package: pip install 'bios-callbacks[{package}]', "
            "or choose logger=tensorboard or logger=csv."
        )


def _check_background(cfg: TrainConfig) -> None:
    device = cfg.snapshot_device
    if device is None:
        return
    if not cfg.async_infrequent:
        raise ValueError(
            f"snapshot_device={device!r} only applies to background rounds: set "
            "async_infrequent=true too, or leave snapshot_device unset."
        )
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"snapshot_device={device!r}: expected a torch device such as 'cpu' or 'cuda:0' "
            f"({error}), or leave it unset for the model's own device."
        ) from None


def default_run_name(kind: str) -> str:
    """`<kind>-<YYYYmmdd-HHMMSS>-<6 random hex digits>`: sorts by start time, and runs started in
    the same second (a sweep, parallel jobs) still get their own directories."""
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def resumed_run_dir(resume_from: str) -> Path | None:
    """The run directory a trainer checkpoint belongs to (`<run>/checkpoints/<name>` -> `<run>`),
    or None for a checkpoint kept anywhere else.

    Example:
        >>> resumed_run_dir("runs/sft-a/checkpoints/step_000004")
        PosixPath('runs/sft-a')
    """
    path = checkpoint_dir(resume_from)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def _import_object(spec: str) -> Any:
    """Imports `package.module:attribute`."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(
            f"{spec!r}: expected 'module:attribute', e.g. 'examples.demo:format_eval'."
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"Cannot import {spec!r}: {exc}. Name a module importable from the current "
            "directory (or on PYTHONPATH) and an attribute it defines."
        ) from exc


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning settings (see `TrainConfig` for the shared ones).

    The test loss (`test_data` through `NLLEvaluator`, logged as `eval/test/loss`) is one of the
    regular evaluators, so it runs every `eval_every` steps (default 10 for SFT), at step 0 and
    after the last step, as in tinker-cookbook.

    Attributes:
        train_data: chat conversations: a JSONL path (one `{"messages": [...]}` a line) or a list.
        test_data: held-out conversations in the same forms; their loss is the "test loss".
        test_every: deprecated: use `eval_every`, the interval of the test loss and the other
            regular evaluators. A value given here becomes `eval_every` (0: only at step 0 and
            the end), with a FutureWarning.

    Example:
        >>> cfg = SFTConfig(train_data=[{"messages": [{"role": "user", "content": "hi"},
        ...     {"role": "assistant", "content": "hello"}]}], steps=3, run_name="doc")
        >>> cfg.kind()
        'sft'
    """

    eval_every: int = SFT_EVAL_EVERY
    train_data: str | list[Any] | None = None
    test_data: str | list[Any] | None = None
    test_every: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.test_every is not None:
            self._map_test_every()
        if self.train_data is None:
            raise ValueError(
                'train_data is missing: give a JSONL file of {"messages": [...]} lines '
                "or a list of conversations, e.g. train_data=data/train.jsonl."
            )

    def _map_test_every(self) -> None:
        """The deprecated `test_every` as `eval_every` (the test loss is a regular evaluator)."""
        _check_int(self, "test_every", minimum=0, hint="use 0 to test only at the start and end")
        interval = self.test_every or self.steps  # 0: at step 0 and after the last step only
        if self.eval_every not in (SFT_EVAL_EVERY, interval):
            raise ValueError(
                f"test_every={self.test_every} and eval_every={self.eval_every}: the test loss "
                "now runs with the regular evaluators every eval_every steps, so there is one "
                "interval for both. Set only eval_every (test_every is deprecated)."
            )
        warnings.warn(
            f"test_every is deprecated: the test loss runs with the regular evaluators every "
            f"eval_every steps; eval_every is now {interval}. Use eval_every={interval} instead.",
            FutureWarning,
            stacklevel=4,
        )
        self.eval_every, self.test_every = interval, None

    @classmethod
    def kind(cls) -> str:
        return "sft"


@dataclass
class RLConfig(TrainConfig):
    """RL settings (see `TrainConfig`); `steps` and `eval_every` count RL iterations.

    Attributes:
        train_data: prompts: a JSONL path or a list of dicts with `messages` (or `prompt`, a
            user message) plus whatever the reward function reads (e.g. `answer`).
        reward_fn: `reward_fn(response_text, datum) -> float`, or a 'module:attribute' string.
        group_size: completions sampled per prompt; advantages are relative to the group mean.
        max_tokens: most tokens per completion.
        temperature: sampling temperature of the rollouts.

    Example:
        >>> cfg = RLConfig(train_data=[{"prompt": "1+1=", "answer": "2"}],
        ...                reward_fn=lambda text, datum: float(datum["answer"] in text),
        ...                run_name="doc")
        >>> cfg.group_size
        4
    """

    train_data: str | list[Any] | None = None
    reward_fn: Callable[[str, dict[str, Any]], float] | str | None = None
    group_size: int = 4
    max_tokens: int = 32
    temperature: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_int(self, "group_size", minimum=2, hint="advantages compare samples in a group")
        _check_int(self, "max_tokens", minimum=1)
        if not self.temperature > 0:
            raise ValueError(
                f"temperature={self.temperature!r}: RL rollouts need sampling; use a value > 0."
            )
        if isinstance(self.reward_fn, str):
            self.reward_fn = _import_object(self.reward_fn)
        if not callable(self.reward_fn):
            raise ValueError(
                f"reward_fn={self.reward_fn!r}: expected a callable (response_text, datum) -> "
                "float, or a 'module:attribute' string naming one."
            )
        if self.train_data is None:
            raise ValueError("train_data is missing: give a JSONL file or a list of prompts.")

    @classmethod
    def kind(cls) -> str:
        return "rl"

    @classmethod
    def size_keys(cls) -> tuple[str, ...]:
        return ("batch_size", "group_size", "max_tokens")
