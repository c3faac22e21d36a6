"""End to end: the train and evaluate tasks, and the entry scripts as a user runs them."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import (
    ROOT,
    TINY_BACKBONE,
    TINY_DATA,
    compose_config,
    run_entry,
    run_forked,
    script_env,
    start_forked,
    wait_forked,
)
from segkit.tasks.evaluate import evaluate
from segkit.tasks.train import optimized_value, train

pytestmark = pytest.mark.slow


def read_metrics_csv(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def protobuf_string(text: str) -> bytes:
    """How a short string field (a W&B tag or group) is stored in a run's .wandb records: its length, then it."""
    return bytes([len(text)]) + text.encode()


def test_run_directory_holds_config_checkpoints_metrics_and_samples(trained_run):
    cfg, run_dir, metrics = trained_run
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 2
    assert summary["metrics"]["val/mIoU_best"] == pytest.approx(metrics["val/mIoU_best"])
    assert summary["metrics"]["val/mIoU_best"] >= summary["metrics"]["val/mIoU"] - 1e-9
    assert "test/mIoU" in summary["metrics"] and "val/IoU/triangle" in summary["metrics"]
    assert Path(summary["best_checkpoint"]).is_file() and Path(summary["last_checkpoint"]).is_file()
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "val_samples").iterdir()) == ["epoch_000.png", "epoch_001.png"]
    rows = read_metrics_csv(run_dir)
    assert [r["epoch"] for r in rows if r.get("val/mIoU")] == ["0", "1"]


def test_wandb_logs_offline_with_config_and_images(trained_run):
    _, run_dir, _ = trained_run
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    (records,) = offline_run.glob("*.wandb")  # what `wandb sync` uploads
    media = list((offline_run / "files" / "media").rglob("*.png"))
    assert media, "validation prediction images were not logged to W&B"
    data = records.read_bytes()
    for key in (b"params/total", b"optimized_metric", b"val/mIoU_best", b"val/IoU/triangle"):
        assert key in data, key


def test_optimized_metric_is_returned_as_float(trained_run):
    cfg, _, metrics = trained_run
    value = optimized_value(metrics, cfg.optimized_metric)
    assert isinstance(value, float) and 0.0 <= value <= 1.0
    with pytest.raises(KeyError, match="val/nope"):
        optimized_value(metrics, "val/nope")


def test_evaluate_reproduces_the_val_miou_of_training(trained_run, tmp_path):
    _, run_dir, metrics = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", "logger=csv", "trainer.accelerator=cpu"], tmp_path)
    scores = evaluate(cfg)
    assert scores["val/mIoU"] == pytest.approx(metrics["val/mIoU"], abs=1e-6)
    assert scores["val/mDice"] == pytest.approx(metrics["val/mDice"], abs=1e-6)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["val/mIoU"] == pytest.approx(scores["val/mIoU"])


def test_evaluate_on_the_test_split_and_a_clear_error_for_a_missing_checkpoint(trained_run, tmp_path):
    _, run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config("evaluate", [f"ckpt_path={ckpt}", "split=test", "trainer.accelerator=cpu"], tmp_path)
    assert "test/mIoU" in evaluate(cfg)
    cfg = compose_config("evaluate", [f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        evaluate(cfg)


def test_resume_from_last_checkpoint_continues_the_epoch_count(trained_run, tmp_path):
    _, run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    cfg = compose_config(
        "train",
        TINY_DATA
        + ["trainer.max_epochs=3", "trainer.accelerator=cpu", "logger=csv", "test=false", f"ckpt_path={ckpt}"],
        tmp_path / "resumed",
    )
    metrics = train(cfg)
    summary = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert summary["epochs"] == 3
    assert summary["global_step"] == state["global_step"] + 2  # one more epoch of 8 images in batches of 4
    assert [r["epoch"] for r in read_metrics_csv(tmp_path / "resumed") if r.get("val/mIoU")] == ["2"]
    best_before = state["state_dict"]["val_miou_best.max_value"].item()
    assert metrics["val/mIoU_best"] >= best_before - 1e-9


def test_train_then_evaluate_scripts(tmp_path):
    """The entry scripts as typed; evaluate.py loads the weights-only best checkpoint, prints its report and keeps
    it in evaluate.log (Hydra's log file)."""
    proc = run_entry(
        str(ROOT / "train.py"),
        "model=fcn",
        "backbone=resnet18",
        "debug=fast",
        "logger=csv",
        *TINY_DATA,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # under the working directory
    summary = json.loads((run_dir / "metrics.json").read_text())
    best = summary["best_checkpoint"]
    assert Path(best).name.startswith("best-")

    proc = run_entry(str(ROOT / "evaluate.py"), f"ckpt_path={best}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout and "triangle" in proc.stdout and "Precision" in proc.stdout  # the printed tables
    (eval_dir,) = (tmp_path / "logs" / "evaluate" / "runs").iterdir()
    scores = json.loads((eval_dir / "metrics.json").read_text())["metrics"]
    assert scores["val/mIoU"] == pytest.approx(summary["metrics"]["val/mIoU_best"], abs=1e-6)
    text = (eval_dir / "evaluate.log").read_text()
    assert f"val of {best}" in text.replace("\n", "")
    assert "Summary (%)" in text and "Per class (%)" in text and "triangle" in text and "Report: " in text
    assert "Tip:" not in text


def test_unknown_backbone_fails_at_start_up_and_simultaneous_runs_get_their_own_directories(tmp_path):
    args = ["backbone.name=resnet5O", "logger=csv", *TINY_DATA, f"paths.log_dir={tmp_path}"]
    children = [start_forked(str(ROOT / "train.py"), *args, cwd=tmp_path) for _ in range(2)]  # two at once
    for proc in map(wait_forked, children):
        assert proc.returncode != 0
        assert 'Unknown backbone "resnet5O"' in proc.stderr and "resnet50" in proc.stderr
    assert len(list((tmp_path / "train" / "runs").iterdir())) == 2


def test_multirun_runs_each_job_in_its_own_directory(tmp_path):
    proc = run_entry(
        str(ROOT / "train.py"),
        "-m",
        "model=fcn,unet",
        "backbone=resnet18",
        "debug=fast",
        "logger=wandb",
        *TINY_DATA,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()  # under the working directory
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    models = []
    for job, model in zip(jobs, ["fcn", "unet"]):
        assert (job / "metrics.json").is_file()
        models.append(OmegaConf.load(job / "config.yaml").model._target_)
        (wandb_run,) = (job / "wandb").glob("offline-run-*/*.wandb")  # one W&B run per job
        records = wandb_run.read_bytes()  # grouped by the sweep, tagged with the job's parameters
        assert protobuf_string(f"train-sweep-{sweep_dir.name}") in records
        assert (
            protobuf_string(f"model={model}") in records and protobuf_string("debug") in records
        )  # debug=fast tags it
    assert models == ["segkit.models.FCN", "segkit.models.UNet"]
    # The sweep summary reads it back: a row per job, best first, with what was swept.
    proc = run_entry(str(ROOT / "summarize_sweep.py"), str(sweep_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == ["fcn", "unet"] and all(r["status"] == "done" for r in rows)
    best = [float(r["val/mIoU_best"]) for r in rows]
    assert best == sorted(best, reverse=True)
    assert (sweep_dir / "summary.md").read_text().count("\n| ") == 3 and (sweep_dir / "summary.png").is_file()


def test_two_process_ddp_on_cpu_stops_together_resumes_and_agrees_across_ranks_and_with_one_process(tmp_path):
    """Started by torchrun (every process composes its own config and they must agree on one run directory) and
    stopped by SIGTERM; resumed by Lightning's own launcher (`trainer=ddp` as typed, which starts the second
    process itself): the ranks agree with each other and with one process scoring the same checkpoint."""
    sigterm = [
        "+callbacks.interrupt._target_=helpers.interrupt.KillAtStep",
        "+callbacks.interrupt.step=2",
        "+callbacks.interrupt.signum=15",
        "trusted_modules=[helpers.interrupt]",
        "callbacks.periodic_checkpoint.every_n_train_steps=2",
    ]  # in the epoch's last batch (2 steps an epoch), where a periodic save lands too
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node=2", "--master-port=29531"]
    proc = subprocess.run(
        [
            *torchrun,
            str(ROOT / "train.py"),
            # The CPU rehearsal of trainer=ddp (sync-BN turned off, said once), in fp32 so that one process can
            # score the same validation data to the same confusion matrix.
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            *sigterm,
            "trainer.max_epochs=1",
            "logger=wandb",
            "test=false",
            "data.num_workers=0",
            *TINY_DATA,
            "data.num_train=16",
            TINY_BACKBONE,  # what is checked is the processes' agreement, not the network
        ],
        cwd=tmp_path,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0, proc.stderr[-3000:]  # torchrun reports its stopped processes as failed
    assert proc.stderr.count("exitcode  : 143") == 2, proc.stderr[-3000:]  # every process stopped by the signal
    assert (proc.stdout + proc.stderr).count("trainer.sync_batchnorm=true needs CUDA GPUs") == 1
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()  # one run directory for both processes
    assert "-torchrun" in run_dir.name
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    history = run_dir / "csv" / "metrics.csv"  # (a step is logged every 50: nothing may have been logged yet)
    assert not history.exists() or "val/mIoU" not in history.read_text()  # stopped before the validation
    # Resumed by Lightning's launcher, which starts rank 1 as a new interpreter itself: rank 0 (the command as
    # typed) runs in a fork of this process, without a third interpreter's imports.
    proc = run_forked(str(ROOT / "train.py"), "ckpt_path=last", "++callbacks.interrupt=null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((tmp_path / "logs" / "train" / "runs").iterdir()) == [run_dir]
    with open(history) as f:  # the resumed run validated the epoch and logged its end
        ends = [(r["epoch"], r["step"]) for r in csv.DictReader(f) if r["val/mIoU"] or r["train/loss_epoch"]]
    assert ends == [("0", "1"), ("0", "1")]
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))  # rank 0's only, one per launch, one run id
    assert len(wandb_runs) == 2 and len({p.name.rsplit("-", 1)[1] for p in wandb_runs}) == 1
    ranks = [json.loads((run_dir / "ranks" / f"metrics.rank{r}.json").read_text())["metrics"] for r in (0, 1)]
    val = {k: v for k, v in ranks[0].items() if k.startswith("val/")}
    assert val and val == {k: v for k, v in ranks[1].items() if k.startswith("val/")}  # synced, identical
    # The checkpoint loads in one process and scores the same validation data to the same confusion matrix.
    single = evaluate(
        compose_config("evaluate", [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], tmp_path / "eval")
    )
    assert single["val/mIoU"] == pytest.approx(val["val/mIoU"], abs=1e-6)
    assert single["val/pixel_acc"] == pytest.approx(val["val/pixel_acc"], abs=1e-6)


def test_tensorboard_logger_records_scores_and_prediction_images(tiny_train_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_train_cfg("logger=tensorboard", TINY_BACKBONE, output_dir=tmp_path / "run"))
    (events,) = (tmp_path / "run" / "tensorboard").rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert {"val/mIoU", "val/IoU/triangle", "train/loss_epoch"} <= set(accumulator.Tags()["scalars"])
    assert "val/predictions" in accumulator.Tags()["images"]
