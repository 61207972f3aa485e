"""One evaluation round's wall time in 1 process vs split over 2 DDP processes, as a ratio.

The same round (`--prompts` greedy questions, `--max-tokens` new tokens each, plus the
held-out loss of the same texts) runs at step 0 of a one-step fit of the embedded model, once
with `devices=1` and once with `devices=2, strategy="ddp"` (gloo), where each rank decodes
about half of the rows. Both use all the machine's cores: the single process runs
`--threads` torch threads, each of the two processes half of them. The round's time is
`eval/time_s` from `eval_results.jsonl`; runs alternate and the median of `--repeats` is
reported.

    python -m bench.split_rounds --prompts 32 --max-tokens 64 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

QUESTION = "Question {i}: name a country and its capital city, then say why you chose it."


def _round_time(devices: int, args: argparse.Namespace) -> tuple[float, list[int] | None]:
    """Runs the fit in a fresh process group; the step-0 round's seconds and rows per rank."""
    threads = max(1, args.threads // devices)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "bench.split_rounds", "--run", out, "--devices"]
        command += [str(devices), "--prompts", str(args.prompts)]
        command += ["--max-tokens", str(args.max_tokens), "--threads", str(threads)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        (results,) = Path(out).rglob("eval_results.jsonl")
        first = json.loads(results.read_text().splitlines()[0])
        return first["time_s"], first.get("work")


def _fit(out: str, devices: int, prompts: int, max_tokens: int, threads: int) -> None:
    """What each process runs: a one-step fit with a round at step 0 (and one at step 1)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from bios_callbacks.callback import EvalCallback
    from bios_callbacks.evaluators import NLLEvaluator, QAEvaluator
    from bios_callbacks.models import EMBEDDED_MODEL, load_model

    torch.set_num_threads(threads)
    model, tokenizer = load_model(EMBEDDED_MODEL)
    rows = [{"input": QUESTION.format(i=i), "target": "Paris"} for i in range(prompts)]
    texts = [tokenizer.encode(row["input"]) for row in rows]
    qa = functools.partial(
        QAEvaluator,
        rows,
        lambda response, target: target in response,
        renderer_name="chatml",
        max_tokens=max_tokens,
        name="qa",
    )

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.tokenizer = model, tokenizer

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch, labels=batch).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=1e-5)

    data = torch.utils.data.DataLoader([torch.tensor(t[:8]) for t in texts], batch_size=2)
    callback = EvalCallback(
        evaluator_builders=[qa, functools.partial(NLLEvaluator, texts)],
        eval_every=1000,
        progress=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=1,
        logger=CSVLogger(out),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one fit, in a child process
    parser.add_argument("--devices", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        _fit(args.run, args.devices, args.prompts, args.max_tokens, args.threads)
        return
    times: dict[int, list[float]] = {1: [], 2: []}
    work = None
    for repeat in range(args.repeats):
        for devices in (1, 2) if repeat % 2 == 0 else (2, 1):
            seconds, rows = _round_time(devices, args)
            times[devices].append(seconds)
            work = rows if devices == 2 else work
            print(f"devices={devices}: round {seconds:.1f} s", flush=True)
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(
        f"\n{args.prompts} prompts x {args.max_tokens} tokens + their held-out loss, "
        f"{args.threads} cores in all"
    )
    print(f"1 process:   {one:.1f} s")
    print(f"2 processes: {two:.1f} s (rows per rank {work})")
    print(f"speedup: {one / two:.2f}x")


if __name__ == "__main__":
    main()
