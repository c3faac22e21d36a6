"""logger=mlflow: a real sweep of two tiny jobs logs to a local MLflow store, offline, and MLflow's own client reads
back each run: its params (the flattened config), its metrics per epoch (the same as the run's metrics.csv), its
prediction samples and confusion matrices as artifacts, and the sweep's tags. Also: the logger sets compose, and
the params stay within MLflow's limits. The runs need mlflow (the optional group `mlflow`, which `make setup`
installs); without it they are skipped."""

import csv
import importlib.util
import json
import socket
import sys
from pathlib import Path

import pytest
from hydra.types import RunMode

from conftest import ROOT, TINY_BACKBONE, TINY_DATA, compose_config, run_entry
from segkit.runs.console import mlflow_ui_command
from segkit.runs.mlflow_logger import MAX_PARAM_VALUE_LENGTH, flat_params, sqlite_path
from segkit.runs.run_names import mlflow_tags

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="mlflow is not installed: the optional group `mlflow` (pip install -e '.[mlflow]', or make setup)",
)
LRS = ("0.001", "0.003")


def test_logger_mlflow_and_the_default_set_with_mlflow_compose(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # which would win over the local store
    alone = compose_config("train", ["logger=mlflow"], tmp_path / "a")
    assert list(alone.logger) == ["csv", "mlflow"]
    assert alone.logger.mlflow._target_ == "segkit.runs.mlflow_logger.MLFlowLogger"
    store = sqlite_path(alone.logger.mlflow.tracking_uri)
    assert store is not None and store.parent.name == "mlflow" and store.parent.parent.name == "logs"  # logs/mlflow
    both = compose_config("train", ["logger=[default,mlflow]"], tmp_path / "b")
    assert set(both.logger) == {"csv", "wandb", "tensorboard", "mlflow"}
    uri = compose_config("train", ["logger=mlflow", "logger.mlflow.tracking_uri=http://host:5000"], tmp_path / "c")
    assert uri.logger.mlflow.tracking_uri == "http://host:5000" and sqlite_path("http://host:5000") is None


def test_the_closing_lines_name_the_command_that_shows_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mlflow_ui_command(f"sqlite:///{tmp_path}/logs/mlflow/mlflow.db") == "make mlflow"
    assert mlflow_ui_command("sqlite:////elsewhere/m.db") == "make mlflow MLFLOW_STORE=/elsewhere/m.db"
    assert mlflow_ui_command("http://host:5000") == "http://host:5000"


def test_without_mlflow_the_logger_is_refused_with_the_fix(monkeypatch):
    from segkit.runs.mlflow_logger import MLFlowLogger, MLflowMissing

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(MLflowMissing, match=r"pip install -c constraints.txt -e '.\[mlflow\]'"):
        MLFlowLogger(tracking_uri="sqlite:///unused/mlflow.db")


def test_mlflow_tags_name_a_sweeps_group_and_each_jobs_overrides():
    single = mlflow_tags("train", ["dev"], RunMode.RUN, "logs/train/multiruns/S", ["model=fcn"])
    assert dict(single) == {"group": "train", "tags": "dev"}
    job = mlflow_tags("train", ["dev", "x"], RunMode.MULTIRUN, "logs/train/multiruns/S", ["model=fcn", "seed=1"])
    assert dict(job) == {
        "group": "train-sweep-S",
        "tags": "dev,x",
        "sweep": "logs/train/multiruns/S",
        "overrides": "model=fcn seed=1",
    }


def test_params_are_dotted_config_keys_within_mlflows_limits():
    params = {"model": {"backbone": {"name": "resnet18"}}, "data": {"size": [40, 56], "root": None}, "flag": True}
    params |= {"long": "x" * (MAX_PARAM_VALUE_LENGTH + 10), "odd key!": 1, "empty": {}}
    assert flat_params(params) == {
        "model.backbone.name": "resnet18",
        "data.size": "[40, 56]",
        "data.root": "null",
        "flag": "true",
        "long": "x" * MAX_PARAM_VALUE_LENGTH,
        "odd key_": "1",
        "empty": "{}",
    }


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`train.py -m logger=mlflow optimizer.lr=0.001,0.003`, two jobs of 2 epochs with the test split, logging to
    a store in a temporary folder (MLFLOW_TRACKING_URI); every name lookup and connection the run attempts is
    recorded. (store URI, sweep directory, attempts)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'store' / 'mlflow.db'}"
    attempts = []
    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect

    def record_lookup(host, *args, **kwargs):
        attempts.append(("getaddrinfo", host))
        return getaddrinfo(host, *args, **kwargs)

    def record_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(("connect", address))
        return connect(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
        patch.setattr(socket, "getaddrinfo", record_lookup)
        patch.setattr(socket.socket, "connect", record_connect)
        proc = run_entry(
            str(ROOT / "train.py"),
            "-m",
            "logger=mlflow",
            f"optimizer.lr={','.join(LRS)}",
            *TINY_DATA,
            TINY_BACKBONE,
            "trainer.max_epochs=2",
            "trainer.accelerator=cpu",
            cwd=tmp,
        )
        telemetry = __import__("os").environ.get("MLFLOW_DISABLE_TELEMETRY")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp / "logs" / "train" / "multiruns").iterdir()
    return uri, sweep_dir, attempts, telemetry


def csv_history(job: Path, key: str) -> list[tuple[int, float]]:
    with open(job / "csv" / "metrics.csv", newline="") as f:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(f) if row.get(key)]


@needs_mlflow
@pytest.mark.slow
def test_a_sweep_logged_to_mlflow_reads_back_through_mlflows_client(sweep, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, sweep_dir, attempts, telemetry = sweep
    assert attempts == [] and telemetry == "true"  # offline: no server, no telemetry
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("segkit")
    runs = client.search_runs([experiment.experiment_id], order_by=["params.`optimizer.lr` ASC"])
    assert [run.data.params["optimizer.lr"] for run in runs] == list(LRS)
    for job_number, run in enumerate(runs):
        job = sweep_dir / str(job_number)
        assert run.info.status == "FINISHED" and run.info.run_name.startswith("train:")
        # Params: the resolved config, flattened with dots.
        params = run.data.params
        assert params["backbone.name"] == "test_resnet" and params["model._target_"] == "segkit.models.UNet"
        assert params["data.image_size"] == "[40, 56]" and params["output_dir"] == str(job)
        # Tags: the sweep's group and directory, the job's overrides.
        tags = run.data.tags
        assert tags["group"] == f"train-sweep-{sweep_dir.name}" and tags["sweep"] == str(sweep_dir)
        assert f"optimizer.lr={LRS[job_number]}" in tags["overrides"].split()
        # Metrics: one value per epoch (per step for the step-level ones), the same as the run's metrics.csv.
        for key in ("val/mIoU", "train/loss_epoch"):
            history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            expected = csv_history(job, key)
            assert len(history) == len(expected) == 2, key
            assert [s for s, _ in history] == [s for s, _ in expected]
            assert [v for _, v in history] == pytest.approx([v for _, v in expected], rel=1e-6)
        summary = json.loads((job / "metrics.json").read_text())["metrics"]
        assert run.data.metrics["test/mIoU"] == pytest.approx(summary["test/mIoU"], rel=1e-6)
        # Artifacts: each epoch's prediction samples, and the confusion matrices of the last validation and the test.
        samples = [f.path for f in client.list_artifacts(run.info.run_id, "val_samples")]
        assert samples == ["val_samples/epoch_000.png", "val_samples/epoch_001.png"]
        for split in ("val", "test"):
            files = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, f"confusion_matrix/{split}")}
            assert files == {"confusion_matrix.png", "confusion_matrix.csv", "per_class.csv"}, split
        local = client.download_artifacts(run.info.run_id, "confusion_matrix/test/confusion_matrix.csv", str(tmp_path))
        with open(local, newline="") as f:
            rows = list(csv.reader(f))[1:]
        counts = [[int(v) for v in row[1:]] for row in rows]
        correct = sum(counts[i][i] for i in range(len(counts)))
        assert correct / sum(map(sum, counts)) == pytest.approx(run.data.metrics["test/pixel_acc"], rel=1e-5)


@needs_mlflow
@pytest.mark.slow
def test_params_beyond_one_batch_and_a_changed_value_keep_the_run_loggable(sweep, caplog):
    from mlflow.tracking import MlflowClient

    from segkit.runs.mlflow_logger import MLFlowLogger

    uri = sweep[0]
    logger = MLFlowLogger(tracking_uri=uri, experiment_name="params", run_name="many")
    many = {"group": {f"key{i:03d}": i for i in range(250)}}  # MLflow takes 100 params a call
    logger.log_hyperparams(many)
    logger.log_hyperparams({"group": {"key000": 0, "key001": "changed"}, "extra": [1, 2]})  # MLflow would refuse
    logger.finalize("success")
    params = MlflowClient(tracking_uri=uri).get_run(logger.run_id).data.params
    assert len(params) == 251 and params["group.key001"] == "1" and params["extra"] == "[1, 2]"
    assert "param group.key001 stays '1'" in caplog.text


@needs_mlflow
@pytest.mark.slow
def test_a_run_resumed_in_place_logs_on_into_its_own_mlflow_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = ["logger=mlflow", *TINY_DATA, TINY_BACKBONE, "trainer.max_epochs=2", "trainer.accelerator=cpu", "test=false"]
    stop = [  # SIGTERM in the second epoch's first step (2 steps an epoch): saved there, stopped
        "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
        "+callbacks.interrupt.step=3",
        "+callbacks.interrupt.signum=15",
        "trusted_modules=[helpers.interrupt]",
    ]
    assert run_entry(str(ROOT / "train.py"), *args, *stop, cwd=tmp_path).returncode == 143
    proc = run_entry(str(ROOT / "train.py"), "ckpt_path=last", "++callbacks.interrupt=null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("segkit").experiment_id])  # one run, continued
    assert run.info.status == "FINISHED" and run.data.params["output_dir"] == str(job)
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/mIoU")]
    assert len(history) == 2 and history == [(s, pytest.approx(v, rel=1e-6)) for s, v in csv_history(job, "val/mIoU")]
