"""Transcripts reach each logger in its own form, read back from what the real loggers wrote:
TensorBoard's Text tab, a W&B table in an offline run, an MLflow table artifact in a local file
store, and a CSV run's transcripts.jsonl."""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import struct
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lit_tiny import TinyLM, make_trainer, scalars, token_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bios_callbacks.callback import EvalCallback
from bios_callbacks.callback.results import read_records
from bios_callbacks.evaluators import SamplingClientEvaluator, Transcript
from bios_callbacks.evaluators.base import as_transcript
from bios_callbacks.types import ModelInput, SamplingParams

PROMPTS = ["Say one", "Say two", "Say three"]


class Graded(SamplingClientEvaluator):
    """Samples a reply per prompt; item i gets a pass/fail grade (i % 2) and an explanation,
    the last item is a plain (prompt, response) pair. Keeps every round's transcripts."""

    name = "graded"

    def __init__(self) -> None:
        self.rounds: list[list[Transcript]] = []

    async def __call__(self, sampling_client):
        async def reply(prompt: str) -> str:
            tokens = sampling_client.tokenizer.encode(prompt)
            result = await sampling_client.sample_async(
                prompt=ModelInput.from_ints(tokens),
                num_samples=1,
                sampling_params=SamplingParams(max_tokens=3, temperature=0.0),
            )
            return sampling_client.tokenizer.decode(result.sequences[0].tokens)

        replies = await asyncio.gather(*(reply(p) for p in PROMPTS))
        items: list = [
            Transcript(p, r, float(i % 2), f"item {i} graded {i % 2}")
            for i, (p, r) in enumerate(zip(PROMPTS[:-1], replies, strict=False))
        ]
        items.append((PROMPTS[-1], replies[-1]))
        self.rounds.append(items)
        return {"passed": 1.0}

    def transcripts(self):
        return self.rounds[-1]


def expected_rows(evaluator: Graded) -> list[list[list]]:
    """Per round: [prompt, response, score, explanation] rows as the loggers should show them."""
    return [[list(as_transcript(item)) for item in items] for items in evaluator.rounds]


def fit(tmp_path, tiny_model, tokenizer, loggers, *builders, max_steps: int = 2):
    callback = EvalCallback(evaluator_builders=list(builders), eval_every=2)
    trainer = make_trainer(tmp_path, [callback], max_steps=max_steps, logger=loggers)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    return trainer


def text_tab(log_dir: str, tag: str) -> dict[int, str]:
    """TensorBoard text `tag` -> {step: markdown}."""
    events = EventAccumulator(log_dir)
    events.Reload()
    [full_tag] = [t for t in events.Tags()["tensors"] if t.startswith(tag)]
    return {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(full_tag)}


# --- W&B ------------------------------------------------------------------------------------


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, every W&B directory under tmp_path; finishes the run afterwards."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    yield tmp_path / "wandb_logs"
    wandb.finish()


def wandb_history(run_dir: Path) -> list[dict[str, str]]:
    """The history rows of an offline run, read from its `.wandb` file (W&B's block log of
    protobuf records: 7-byte header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST
    chunks behind a 7-byte crc/length/kind header)."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("*.wandb")
    data, block, position, chunk, rows = path.read_bytes(), 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        item.key or "/".join(item.nested_key): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows


def test_wandb_run_gets_a_table_per_evaluator_at_each_step(
    wandb_offline, tmp_path, tiny_model, tokenizer
):
    from lightning.pytorch.loggers import WandbLogger

    evaluator = Graded()
    wandb_offline.mkdir()
    logger = WandbLogger(save_dir=str(wandb_offline), project="bios-tests")
    fit(tmp_path, tiny_model, tokenizer, [logger], lambda: evaluator)
    import wandb

    wandb.finish()
    wandb.teardown()  # waits for W&B's service to write out the run's .wandb file

    [run_dir] = (wandb_offline / "wandb").glob("offline-run-*")
    tables = [row for row in wandb_history(run_dir) if "eval/graded/transcripts/path" in row]
    assert [row["trainer/global_step"] for row in tables] == [0, 2]
    for row, expected in zip(tables, expected_rows(evaluator), strict=True):
        assert row["eval/graded/transcripts/_type"] == "table-file"
        table = json.loads((run_dir / "files" / row["eval/graded/transcripts/path"]).read_text())
        assert table["columns"] == ["prompt", "response", "score", "explanation"]
        assert table["data"] == expected
    assert expected[0][2:] == [0.0, "item 0 graded 0"]
    assert expected[-1][2:] == [None, None]  # the plain pair: no score, no explanation
    files = glob.glob(str(run_dir / "files/media/table/eval/graded/*.table.json"))
    assert len(files) == 2


# --- MLflow ---------------------------------------------------------------------------------


def test_mlflow_run_gets_a_table_artifact_per_evaluator_and_step(
    tmp_path, tiny_model, tokenizer, monkeypatch
):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    # MLflow 3 refuses a file store unless asked: a local store needs no server in tests.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    evaluator = Graded()
    logger = MLFlowLogger(experiment_name="bios", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit(tmp_path, tiny_model, tokenizer, [logger], lambda: evaluator)

    client = logger.experiment
    listed = sorted(a.path for a in client.list_artifacts(logger.run_id, "eval/graded"))
    assert listed == ["eval/graded/step_0.json", "eval/graded/step_2.json"]
    for step, expected in zip((0, 2), expected_rows(evaluator), strict=True):
        local = client.download_artifacts(logger.run_id, f"eval/graded/step_{step}.json", tmp_path)
        table = json.loads(Path(local).read_text())
        assert table["columns"] == ["prompt", "response", "score", "explanation"]
        assert table["data"] == expected
    # MLflow's UI shows these artifacts as tables
    tags = json.loads(client.get_run(logger.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "eval/graded/step_2.json", "type": "table"} in tags
    metrics = client.get_metric_history(logger.run_id, "eval/graded/passed")
    assert [m.step for m in metrics] == [0, 2]


# --- CSV and TensorBoard --------------------------------------------------------------------


def test_csv_run_gets_transcripts_jsonl_beside_metrics_csv(tmp_path, tiny_model, tokenizer):
    evaluator = Graded()
    logger = CSVLogger(str(tmp_path), name="csv")
    fit(tmp_path, tiny_model, tokenizer, [logger], lambda: evaluator)

    log_dir = Path(logger.log_dir)
    assert (log_dir / "metrics.csv").exists()
    lines = [json.loads(line) for line in (log_dir / "transcripts.jsonl").open(encoding="utf-8")]
    expected = [
        {"step": step, "evaluator": "graded", **dict(zip(Transcript._fields, row, strict=True))}
        for step, rows in zip((0, 2), expected_rows(evaluator), strict=True)
        for row in rows
    ]
    assert lines == expected
    assert [line["score"] for line in lines[:3]] == [0.0, 1.0, None]


def test_tensorboard_text_shows_each_items_score_and_explanation(tmp_path, tiny_model, tokenizer):
    evaluator = Graded()
    trainer = fit(
        tmp_path, tiny_model, tokenizer, TensorBoardLogger(str(tmp_path)), lambda: evaluator
    )
    texts = text_tab(trainer.log_dir, "eval/graded/samples")
    assert sorted(texts) == [0, 2]
    items = texts[2].split("\n\n---\n\n")
    last = [as_transcript(item) for item in evaluator.rounds[-1]]
    assert items[0] == (
        f"**prompt:** Say one\n\n**response:** {last[0].response}\n\n**score:** 0"
        "\n\n**explanation:** item 0 graded 0"
    )
    assert "**score:** 1" in items[1]
    assert items[2] == f"**prompt:** Say three\n\n**response:** {last[2].response}"


# --- loggers that cannot take transcripts ---------------------------------------------------


class ListLogger(Logger):
    """A logger of a type the callback does not know: keeps metrics in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_an_unknown_logger_gets_metrics_and_one_warning(tmp_path, tiny_model, tokenizer, caplog):
    unknown = ListLogger()
    loggers = [TensorBoardLogger(str(tmp_path)), unknown]
    with caplog.at_level(logging.WARNING, logger="bios_callbacks.callback"):
        trainer = fit(tmp_path, tiny_model, tokenizer, loggers, Graded, max_steps=4)
    warnings = [r.getMessage() for r in caplog.records if "transcripts are not" in r.getMessage()]
    assert warnings == [
        "transcripts are not written to ListLogger: it is none of TensorBoardLogger, "
        "WandbLogger, MLFlowLogger, CSVLogger (its eval metrics are logged as usual)"
    ]
    assert [step for step, m in unknown.metrics if "eval/graded/passed" in m] == [0, 2, 4]
    assert sorted(text_tab(trainer.log_dir, "eval/graded/samples")) == [0, 2, 4]


def test_a_logger_that_cannot_take_transcripts_does_not_stop_training(
    tmp_path, tiny_model, tokenizer, caplog
):
    broken = CSVLogger(str(tmp_path), name="csv")
    (Path(broken.log_dir) / "transcripts.jsonl").mkdir(parents=True)  # a directory: no appends
    loggers = [broken, TensorBoardLogger(str(tmp_path))]
    trainer = fit(tmp_path, tiny_model, tokenizer, loggers, Graded)
    assert trainer.global_step == 2
    assert "could not write transcripts to CSVLogger at step 0" in caplog.text
    assert "IsADirectoryError" in caplog.text
    assert sorted(text_tab(loggers[1].log_dir, "eval/graded/samples")) == [0, 2]
    assert "eval/graded/passed" in (Path(broken.log_dir) / "metrics.csv").read_text()


class Malformed(SamplingClientEvaluator):
    """Scores fine, but one transcript item is a bare string."""

    name = "malformed"

    async def __call__(self, sampling_client):
        return {"ok": 1.0}

    def transcripts(self):
        return [("Say one", "one", 1.0), "just a string"]


def test_a_malformed_transcript_item_is_a_hook_failure(tmp_path, tiny_model, tokenizer):
    trainer = fit(tmp_path, tiny_model, tokenizer, TensorBoardLogger(str(tmp_path)), Malformed)
    tags = scalars(trainer.log_dir)
    assert tags["eval/malformed/ok"] == [(0, 1.0), (2, 1.0)]
    assert [v for _, v in tags["eval/failures"]] == [1.0, 1.0]
    [failure] = read_records(f"{trainer.log_dir}/eval_results.jsonl")[0].failures
    assert failure["kind"] == "hook"
    assert "transcript item 'just a string' is not a (prompt, response) pair" in failure["message"]


def test_as_transcript_accepts_pairs_and_scored_tuples():
    assert as_transcript(("q", "a")) == Transcript("q", "a")
    assert as_transcript(["q", "a", True, "why"]) == Transcript("q", "a", 1.0, "why")
    assert as_transcript(("q", "a", float("nan"))).score is None
    with pytest.raises(TypeError, match="score a number or None"):
        as_transcript(("q", "a", "C"))


# --- evaluators that grade each item --------------------------------------------------------


def csv_transcripts(tmp_path, tiny_model, tokenizer, builder, **fit_options) -> list[dict]:
    """Trains with `builder` and a CSVLogger; the lines of the run's transcripts.jsonl."""
    logger = CSVLogger(str(tmp_path), name="csv")
    callback = EvalCallback(evaluator_builders=[builder], progress=False)
    trainer = make_trainer(tmp_path, [callback], logger=logger, **fit_options)
    trainer.fit(TinyLM(tiny_model, tokenizer), token_loader())
    path = Path(logger.log_dir) / "transcripts.jsonl"
    return [json.loads(line) for line in path.open(encoding="utf-8")]


def test_qa_transcripts_carry_each_answers_grade(tmp_path, tiny_model, tokenizer):
    from bios_callbacks.evaluators import QAEvaluator

    def grader(response: str, target: str) -> bool:
        if target == "none":
            raise KeyError("no rubric")
        return target == "right"

    questions = [
        {"input": f"Question {i}?", "target": t} for i, t in enumerate(["right", "wrong", "none"])
    ]
    lines = csv_transcripts(
        tmp_path,
        tiny_model,
        tokenizer,
        lambda: QAEvaluator(questions, grader, renderer_name="chatml", max_tokens=3),
        max_steps=1,
    )
    assert [(line["step"], line["prompt"]) for line in lines] == [
        (step, f"Question {i}?") for step in (0, 1) for i in range(3)
    ]
    assert [(line["score"], line["explanation"]) for line in lines[:3]] == [
        (1.0, None),
        (0.0, None),
        (None, "grader_fn raised KeyError: 'no rubric'"),
    ]
    assert all(isinstance(line["response"], str) for line in lines)


def inspect_tasks():
    """Two Inspect tasks: a judge-like scorer (C / I verdicts with reasons, one unscored) and
    `model_graded_qa` graded by the model being trained (a random model gives no verdict)."""
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import Score, accuracy, model_graded_qa, scorer
    from inspect_ai.solver import generate

    @scorer(metrics=[accuracy()])
    def verdicts():
        async def score(state, target):
            if state.sample_id == 2:
                return Score.unscored(reason="no_verdict", explanation="the judge said nothing")
            grade = "C" if state.sample_id == 0 else "I"
            return Score(value=grade, explanation=f"GRADE: {grade} for sample {state.sample_id}")

        return score

    def samples():
        return MemoryDataset([Sample(input=f"Say {i}", target=str(i), id=i) for i in range(3)])

    return [
        Task(name="verdicts", dataset=samples(), solver=generate(), scorer=verdicts()),
        Task(name="judged", dataset=samples(), solver=generate(), scorer=model_graded_qa()),
    ]


def test_inspect_transcripts_carry_the_scorers_value_and_explanation(
    tmp_path, tiny_model, tokenizer
):
    from bios_callbacks.eval.inspect_evaluators import InspectEvaluatorBuilder

    builder = InspectEvaluatorBuilder(
        tasks=inspect_tasks(), renderer_name="chatml", max_tokens=3, log_dir=tmp_path
    )
    lines = csv_transcripts(tmp_path, tiny_model, tokenizer, builder, max_steps=1)
    first_round = [line for line in lines if line["step"] == 0]
    assert [line["prompt"] for line in first_round] == ["Say 0", "Say 1", "Say 2"] * 2
    verdicts, judged = first_round[:3], first_round[3:]
    assert [(line["score"], line["explanation"]) for line in verdicts] == [
        (1.0, "GRADE: C for sample 0"),
        (0.0, "GRADE: I for sample 1"),
        (None, "no_verdict: the judge said nothing"),
    ]
    # the judge (here the model itself) wrote no GRADE: the sample is unscored, and the
    # transcript shows what the judge said
    assert all(line["score"] is None for line in judged)
    assert all("Grade not found in model output" in line["explanation"] for line in judged)
    assert sorted({line["step"] for line in lines}) == [0, 1]
