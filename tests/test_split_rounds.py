"""Rounds split over 2 CPU processes (gloo): DDP, and FSDP2 (ModelParallelStrategy with
fully_shard), on a tiny model.

The test runs this file as a script (Lightning's launcher re-runs it for rank 1), bounded by a
timeout so a deadlock fails the test instead of hanging it. Rank 1 has a fault injected into its
engine: any prompt holding `POISON` fails there.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ddp

MAX_STEPS = 3
RESUMED_MAX_STEPS = 5
EVAL_EVERY = 2
POISON = 4242  # a token id
HELD_OUT = [[1, 200, 300, 400, 500], [1, 600, 700], [1, 800, 900, 1000]]
QUESTIONS = [f"Question {i}: what is {i} + {i}?" for i in range(8)]
FINISHED: set[tuple[int, str]] = set()  # (step, evaluator) on rank 0, for `Poisoned`


class Answers:
    """Greedy answers to every question, and 6 seeded samples of the first; written to
    `answers-<step>.json` so the test can compare them with one process's."""

    name = "answers"

    def set_run_context(self, log_dir, step):
        self.path, self.step = Path(log_dir, f"answers-{step}.json"), step

    async def __call__(self, client):
        prompts = [client.tokenizer.encode(q) for q in QUESTIONS]
        try:
            greedy, seeded = await _ask(client, prompts)
        finally:
            FINISHED.add((self.step, self.name))
        self.path.write_text(json.dumps({"greedy": greedy, "seeded": seeded}))
        return {"rows": len(greedy) + len(seeded)}


async def _ask(client, prompts):
    from bios_callbacks import types

    greedy_params = types.SamplingParams(max_tokens=6, temperature=0.0)
    # top_k keeps each draw among a few dozen tokens: the tiny model's distribution over all
    # 49k is so flat that a draw can fall within last-bit noise of a token boundary, and a
    # rank's batch (other rows, other padding) can move the logits' last bits. Without it, one
    # of 36 draws went to the neighbouring token on an AVX-512 Xeon, every run.
    seeded_params = types.SamplingParams(max_tokens=6, temperature=1.0, top_k=50, seed=7)
    responses = await asyncio.gather(*(client.sample_async(p, 1, greedy_params) for p in prompts))
    seeded = await client.sample_async(prompts[0], 6, seeded_params)
    greedy = [r.sequences[0].tokens for r in responses]
    return greedy, [s.tokens for s in seeded.sequences]


class Heartbeat:
    """One short sample, then a pause long enough for a few progress lines to count it."""

    name = "heartbeat"

    async def __call__(self, client):
        from bios_callbacks import types

        await client.sample_async([1, 200, 300], 1, types.SamplingParams(max_tokens=2))
        await asyncio.sleep(0.3)
        return {"waited": 1.0}


class Broken:
    name = "broken"

    async def __call__(self, client):
        raise ValueError("evaluator broke")


class Poisoned:
    """Two samples of a poisoned prompt: one slice per rank, and rank 1's fails. It waits for
    the other sampling evaluators, since a failed prefill fails every request prefilled with
    it (as in one process)."""

    name = "poisoned"

    def set_run_context(self, log_dir, step):
        self.step = step

    async def __call__(self, client):
        from bios_callbacks import types

        while not {(self.step, "answers"), (self.step, "gives_up")} <= FINISHED:
            await asyncio.sleep(0.01)
        prompt = [1, 200, POISON, 300]
        await client.sample_async(prompt, 2, types.SamplingParams(max_tokens=4, temperature=0))
        return {"never": 1.0}


class GivesUp:
    """Starts a long request and abandons it after 0.2 s (its slices are cancelled)."""

    name = "gives_up"

    def set_run_context(self, log_dir, step):
        self.step = step

    async def __call__(self, client):
        from bios_callbacks import types

        params = types.SamplingParams(max_tokens=400, temperature=1.0)
        try:
            await asyncio.wait_for(client.sample_async([1, 200, 300], 64, params), 0.2)
        except asyncio.TimeoutError:
            return {"timed_out": 1.0}
        finally:
            FINISHED.add((self.step, self.name))
        return {"timed_out": 0.0}


@pytest.fixture(scope="module")
def single_process(tokenizer):
    """One process's answers and held-out loss on the same weights as step 0."""
    from tiny import make_tiny_model

    from bios_callbacks.evaluators import NLLEvaluator
    from bios_callbacks.sampling import SamplingClient
    from bios_callbacks.training_client import TrainingClient

    model = make_tiny_model(tokenizer)
    prompts = [tokenizer.encode(q) for q in QUESTIONS]
    with SamplingClient.from_module(model, tokenizer) as client:
        greedy, seeded = asyncio.run(_ask(client, prompts))
    nll = asyncio.run(NLLEvaluator(HELD_OUT)(TrainingClient(model)))
    return {"greedy": greedy, "seeded": seeded, "nll": nll}


def _launch(out_dir: Path, strategy: str) -> str:
    """Runs this file's 2-process script for `strategy`, bounded so a deadlock fails; returns
    what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    done = subprocess.run(
        [sys.executable, __file__, str(out_dir), strategy],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_split_round_spreads_rows_over_ranks_matches_one_process_and_resumes(
    tmp_path, strategy, single_process
):
    printed = _launch(tmp_path, strategy)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]  # every rank ends with rank 0's numbers
    log_dir = Path(ranks[0]["log_dir"])

    # Step 0 evaluates the initial weights: the same answers and loss as one process.
    answers = json.loads((log_dir / "answers-0.json").read_text())
    assert answers["greedy"] == single_process["greedy"]
    assert answers["seeded"] == single_process["seeded"]  # each sample keeps its seed
    assert len({tuple(s) for s in answers["seeded"]}) > 1  # and the seeds differ
    lines = (log_dir / "eval_results.jsonl").read_text().splitlines()
    rounds = [json.loads(line) for line in lines]
    first = rounds[0]
    for key, value in single_process["nll"].items():
        assert first["metrics"][f"eval/nll/{key}"] == pytest.approx(value, rel=1e-5)

    # Logged once per step, on one set of files, across a checkpoint and resume at step 3.
    from lit_tiny import scalars

    assert [s for s, _ in scalars(log_dir)["eval/answers/rows"]] == [0, 2, 3, 4, 5]
    assert [r["step"] for r in rounds] == [0, 2, 3, 4, 5]

    # Each rank decoded or scored about half of the rows.
    for record in rounds:
        work = record["work"]
        assert len(work) == 2 and min(work) > 0, work
        assert abs(work[0] - work[1]) <= 0.25 * sum(work), work

    # Failures stay with their evaluators, on every round, and nothing hung.
    for record in rounds:
        failures = {f["evaluator"]: f["message"] for f in record["failures"]}
        assert "evaluator broke" in failures["broken"]
        assert "rank 1" in failures["poisoned"] and "InjectedFault" in failures["poisoned"]
        assert record["metrics"]["eval/gives_up/timed_out"] == 1.0

    # A long round's progress lines count the samples the ranks have finished.
    counts = [int(done) for done in re.findall(r"(\d+)/\d+ samples done", printed)]
    assert counts and max(counts) > 0, printed[-2000:]


def test_fsdp1_rounds_gather_the_roots_own_parameters_and_match_one_process(
    tmp_path, single_process
):
    """Lightning's FSDPStrategy needs a GPU, so this drives torch's FSDP1 directly on 2 CPU
    processes: a root unit over the whole module (as FSDPStrategy wraps the LightningModule)
    with one unit per decoder layer; a split round on it, after a training forward and
    backward pass, gives one process's greedy answers."""
    _launch(tmp_path, "fsdp1")
    answers = json.loads((tmp_path / "answers.json").read_text())
    assert answers["greedy"] == single_process["greedy"]
    assert answers["seeded"] == single_process["seeded"]
    assert min(answers["served"]) > 0


def _fsdp1_rank(rank: int, out_dir: str, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from bios_callbacks.callback.round import RoundOutcome
    from bios_callbacks.distributed.rounds import SplitRounds
    from bios_callbacks.models import EMBEDDED_MODEL
    from bios_callbacks.tokenizer_utils import get_tokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import make_tiny_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)

    class Holder(torch.nn.Module):  # what FSDPStrategy wraps: the LightningModule
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(input_ids=ids, labels=ids).loss

    tokenizer = get_tokenizer(EMBEDDED_MODEL)
    holder = Holder(make_tiny_model(tokenizer))
    root = FullyShardedDataParallel(
        holder,
        auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    root(torch.tensor([[1, 200, 300, 400]])).backward()  # a training step, without the update
    rounds = SplitRounds(holder.model, tokenizer, sharded=True)

    async def answer(clients) -> RoundOutcome:
        prompts = [tokenizer.encode(q) for q in QUESTIONS]
        greedy, seeded = await _ask(clients.sampling(), prompts)
        Path(out_dir, "answers.json").write_text(json.dumps({"greedy": greedy, "seeded": seeded}))
        return RoundOutcome()

    rounds.run(None, answer, root=root)
    if rank == 0:
        data = json.loads(Path(out_dir, "answers.json").read_text())
        data["served"] = rounds.served
        Path(out_dir, "answers.json").write_text(json.dumps(data))
    rounds.close()
    dist.destroy_process_group()


def _run_fsdp1(out_dir: str) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_fsdp1_rank, args=(out_dir, port), nprocs=2)


def _run(out_dir: str, strategy_name: str) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lit_tiny import LazyTinyLM, TinyLM, token_loader
    from tiny import make_tiny_model

    from bios_callbacks.callback import EvalCallback
    from bios_callbacks.evaluators import NLLEvaluator
    from bios_callbacks.models import EMBEDDED_MODEL
    from bios_callbacks.sampling.runner import ModelRunner
    from bios_callbacks.tokenizer_utils import get_tokenizer

    class InjectedFault(RuntimeError):
        pass

    prefill = ModelRunner.prefill

    def poisoned_prefill(self, parts):
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        if rank == 1 and any(POISON in request.prompt for request, _ in parts):
            raise InjectedFault("poisoned prompt")
        return prefill(self, parts)

    ModelRunner.prefill = poisoned_prefill

    class ShardedLM(LazyTinyLM):
        """Creates its model in configure_model and shards it there, as Lightning suggests
        for models too large for one device."""

        def configure_model(self):
            from torch.distributed.fsdp import fully_shard

            if self.model is not None:
                return
            super().configure_model()
            for layer in self.model.model.layers:
                fully_shard(layer)
            fully_shard(self.model)

    tokenizer = get_tokenizer(EMBEDDED_MODEL)

    def fit(max_steps: int, ckpt_path: str | None = None) -> pl.Trainer:
        if strategy_name == "fsdp2":
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
            module = ShardedLM(tokenizer)
        else:
            strategy, module = "ddp", TinyLM(make_tiny_model(tokenizer), tokenizer)
        callback = EvalCallback(
            evaluator_builders=[
                Answers,
                functools.partial(NLLEvaluator, HELD_OUT),
                Broken,
                Poisoned,
                GivesUp,
                Heartbeat,
            ],
            eval_every=EVAL_EVERY,
            progress_every_s=0.05,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            max_steps=max_steps,
            logger=TensorBoardLogger(out_dir, name="run", version=0),
            callbacks=[callback],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, token_loader(), ckpt_path=ckpt_path)
        return trainer

    ckpt = str(Path(out_dir, "step3.ckpt"))
    fit(MAX_STEPS).save_checkpoint(ckpt)
    trainer = fit(RESUMED_MAX_STEPS, ckpt_path=ckpt)  # resumes at step 3: rounds at 4 and 5
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("eval/")}
    result = {"metrics": metrics, "log_dir": trainer.log_dir}
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    if sys.argv[2] == "fsdp1":
        _run_fsdp1(sys.argv[1])
    else:
        _run(sys.argv[1], sys.argv[2])
        # Everything is written. Skip interpreter shutdown: now and then (about 1 run in 15
        # here) it aborts while torch.distributed's gloo threads are torn down ("terminate
        # called without an active exception", after "tstate is freed"), which says nothing
        # about the rounds under test.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
