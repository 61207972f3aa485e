"""`logger=csv|wandb|mlflow` on a short real SFT run: each logger's own files, read back with
the real packages (W&B offline, MLflow's local store), hold the training and eval metrics at
their steps, and the run's results file stays in the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from test_transcript_loggers import wandb_history
from tiny import make_tiny_model

from bios_callbacks.callback.results import read_records
from trainers.config import SFTConfig
from trainers.sft import train


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"Code {i}?"},
            {"role": "assistant", "content": f"The code is {7 * i + 3}."},
        ]
    }


RUN = dict(
    train_data=[chat(i) for i in range(8)],
    test_data=[chat(90), chat(91)],
    steps=2,
    eval_every=2,
    batch_size=4,
    learning_rate=3e-3,
)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("BIOS_CHECKPOINT_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    return tmp_path / "runs"


def run(logger: str, tokenizer, capsys) -> tuple[Path, dict[str, dict[int, float]], str]:
    """Trains with `logger`; returns the run directory, the eval results file's metrics by
    step and what the run printed."""
    cfg = SFTConfig(logger=logger, run_name=f"with-{logger}", **RUN)
    result = train(cfg, model=make_tiny_model(tokenizer), tokenizer=tokenizer)
    records = read_records(result.log_dir / "eval_results.jsonl")
    by_key: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.metrics.items():
            by_key.setdefault(key, {})[record.step] = value
    return result.log_dir, by_key, capsys.readouterr().out


def resume(logger: str) -> Path:
    """Resumes `run(logger, ...)`'s run from its last checkpoint for two more steps."""
    resume_from = f"bios://with-{logger}/step_000002"
    return train(SFTConfig(logger=logger, resume_from=resume_from, **{**RUN, "steps": 4})).log_dir


def test_csv_logger_writes_metrics_csv_in_the_run_directory(tokenizer, root, capsys):
    run_dir, results, out = run("csv", tokenizer, capsys)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    train_loss = {int(r["step"]): float(r["train/loss"]) for r in rows if r["train/loss"]}
    test_loss = {int(r["step"]): float(r["eval/test/loss"]) for r in rows if r["eval/test/loss"]}
    assert sorted(train_loss) == [0, 1]
    assert test_loss == pytest.approx(results["eval/test/loss"]) and sorted(test_loss) == [0, 2]
    assert f"view the logs: {run_dir / 'metrics.csv'}" in out
    assert not list(run_dir.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in root.parent.iterdir()) == ["runs"]


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode with its own directories under tmp_path."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    yield
    wandb.teardown()


def test_wandb_logger_writes_an_offline_run_in_the_run_directory(
    wandb_offline, tokenizer, root, capsys
):
    import wandb

    run_dir, results, out = run("wandb", tokenizer, capsys)
    assert wandb.run is None  # the trainer finished its run
    wandb.teardown()  # waits for W&B's service to write out the run's .wandb file

    [offline_run] = (run_dir / "wandb").glob("offline-run-*")
    rows = wandb_history(offline_run)
    train_steps = [row["trainer/global_step"] for row in rows if "train/loss" in row]
    test_loss = {
        row["trainer/global_step"]: row["eval/test/loss"] for row in rows if "eval/test/loss" in row
    }
    assert train_steps == [0, 1]
    assert test_loss == pytest.approx(results["eval/test/loss"]) and sorted(test_loss) == [0, 2]
    assert "view the logs: W&B project bios-callbacks (offline: wandb sync" in out
    assert (run_dir / "eval_results.jsonl").exists()

    # Resumed, the run logs on to the same W&B run (offline: a second folder with its id).
    assert resume("wandb") == run_dir
    wandb.teardown()
    first, second = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert first.name.rsplit("-", 1)[1] == second.name.rsplit("-", 1)[1]
    rows = wandb_history(second)
    assert [row["trainer/global_step"] for row in rows if "train/loss" in row] == [2, 3]


def test_mlflow_logger_keeps_a_local_store_in_the_run_directory(
    tokenizer, root, capsys, monkeypatch
):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # unset here and restored afterwards: the trainer sets it for its local store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    run_dir, results, out = run("mlflow", tokenizer, capsys)
    uri = f"file:{run_dir.resolve() / 'mlruns'}"
    assert f"view the logs: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {uri}" in out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bios-callbacks")
    [mlflow_run] = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "with-mlflow" and mlflow_run.info.status == "FINISHED"
    run_id = mlflow_run.info.run_id
    test_loss = {m.step: m.value for m in client.get_metric_history(run_id, "eval/test/loss")}
    assert test_loss == pytest.approx(results["eval/test/loss"]) and sorted(test_loss) == [0, 2]
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == [0, 1]

    # Resumed, the run logs on to the same MLflow run.
    assert resume("mlflow") == run_dir
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == [0, 1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"
    # the run's own files stay in the run directory, not in the tracking store
    assert (run_dir / "eval_results.jsonl").exists()
    assert not list((run_dir / "mlruns").rglob("eval_results.jsonl"))
    assert sorted(p.name for p in root.parent.iterdir()) == ["runs"]
