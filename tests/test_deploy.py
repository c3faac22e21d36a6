"""After training: evaluate's report against a confusion matrix computed by hand from the masks it saved,
predict.py's palette PNGs, and exports that run in onnxruntime / torch.export like the PyTorch model."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config
from helpers.fake_data import save
from segkit.tasks.evaluate import evaluate
from segkit.tasks.export import export
from segkit.tasks.predict import predict
from segkit.training.module import load_module

pytestmark = pytest.mark.slow  # every test reads the shared trained run


@pytest.fixture
def checkpoint(trained_run) -> Path:
    """The shared run's last checkpoint (conftest.trained_run): read, never written."""
    return trained_run[1] / "checkpoints" / "last.ckpt"


def write_labelled_folder(root: Path, n: int = 5) -> dict[str, np.ndarray]:
    """Four classes and ignored (255) pixels, as the checkpoint's data has them."""
    rng = np.random.default_rng(0)
    masks = {}
    for i in range(n):
        mask = rng.integers(0, 4, (40, 56)).repeat(1, 0).astype(np.uint8)
        mask[:5] = 255
        image = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
        image[mask == 1] = (250, 30, 30)
        save(root / "images" / f"{i}.png", image)
        save(root / "masks" / f"{i}.png", mask)
        masks[str(i)] = mask
    return masks


def hand_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    tp = np.diag(confusion).astype(float)
    gt, pred = confusion.sum(1), confusion.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "IoU": tp / (gt + pred - tp),
            "Dice": 2 * tp / (gt + pred),
            "Precision": tp / pred,
            "Recall": tp / gt,
            "pixels": gt,
            "aAcc": tp.sum() / confusion.sum(),
        }


def test_evaluate_report_equals_a_confusion_matrix_of_the_saved_predictions(checkpoint, tmp_path):
    masks = write_labelled_folder(tmp_path / "other")
    out = tmp_path / "eval"
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={checkpoint}",
            "data=folder",
            f"data.root={tmp_path / 'other'}",
            "data.splits={train:null,val:1.0}",
            "data.num_classes=4",
            "data.class_names=[background,disc,square,triangle]",
            "data.palette=[[0,0,0],[230,25,75],[60,180,75],[0,130,200]]",
            "data.num_workers=0",
            "data.eval_batch_size=2",
            "save_predictions=true",
        ],
        out,
    )
    metrics = evaluate(cfg)
    confusion = np.zeros((4, 4), dtype=np.int64)
    for name, mask in masks.items():
        saved = Image.open(out / "predictions" / f"{name}.png")
        assert saved.mode == "P"
        pred = np.asarray(saved)
        keep = mask != 255
        np.add.at(confusion, (mask[keep], pred[keep]), 1)
    expected = hand_scores(confusion)
    report = json.loads((out / "metrics.json").read_text())
    assert report["confusion_matrix"] == confusion.tolist()
    with open(out / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        for key in ("IoU", "Dice", "Precision", "Recall"):
            assert float(row[key]) == pytest.approx(expected[key][i], nan_ok=True), (key, i)
        assert int(row["pixels"]) == expected["pixels"][i]
    summary = report["summary"]
    assert summary["aAcc"] == pytest.approx(expected["aAcc"])
    assert summary["mIoU"] == pytest.approx(np.nanmean(expected["IoU"]))
    assert summary["mPrecision"] == pytest.approx(np.nanmean(expected["Precision"]))
    assert metrics["val/mIoU"] == pytest.approx(summary["mIoU"])
    with open(out / "confusion_matrix.csv") as f:
        table = list(csv.reader(f))
    assert [list(map(int, r[1:])) for r in table[1:]] == confusion.tolist()
    assert Image.open(out / "confusion_matrix.png").size[0] > 100


def test_evaluate_with_windows_and_tta_on_the_checkpoint_data(checkpoint, tmp_path):
    plain = evaluate(compose_config("evaluate", [f"ckpt_path={checkpoint}"], tmp_path / "plain"))
    # One window the size of the image is the plain pass.
    window = evaluate(
        compose_config(
            "evaluate", [f"ckpt_path={checkpoint}", "inference=slide", "inference.crop_size=[40,56]"], tmp_path / "w"
        )
    )
    assert window["val/mIoU"] == pytest.approx(plain["val/mIoU"], abs=1e-6)
    tta = evaluate(compose_config("evaluate", [f"ckpt_path={checkpoint}", "inference=tta"], tmp_path / "tta"))
    assert 0 <= tta["val/mIoU"] <= 1 and "val/loss" not in tta


def test_predict_writes_palette_masks_that_reload_to_the_same_ids(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    for name, size in (("a", (40, 56)), ("b", (40, 56)), ("sub/c", (33, 47))):
        save(tmp_path / "in" / f"{name}.png", (rng.random((*size, 3)) * 255).astype(np.uint8))
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={checkpoint}",
            f"input={tmp_path / 'in'}",
            f"output={tmp_path / 'out'}",
            "batch_size=2",
            "num_workers=0",
            "trainer.accelerator=cpu",
        ],
        tmp_path / "run",
    )
    predict(cfg)
    net = load_module(checkpoint).net.eval()
    for name in ("a", "b", "sub/c"):
        saved = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
        assert saved.mode == "P" and saved.getpalette()[3:6] == [230, 25, 75]
        image = torch.from_numpy(np.array(Image.open(tmp_path / "in" / f"{name}.png"))).permute(2, 0, 1)
        with torch.no_grad():
            expected = net(image[None].float() / 255).argmax(1)[0].numpy()
        assert np.array_equal(np.asarray(saved), expected), name
        assert (tmp_path / "out" / "overlays" / f"{name}.png").is_file()


def test_export_runs_in_onnxruntime_and_torch_export_like_pytorch(checkpoint, tmp_path):
    import onnx  # the export group's packages, imported by the one test that needs them
    import onnxruntime

    cfg = compose_config("export", [f"ckpt_path={checkpoint}", f"output={tmp_path / 'export'}"], tmp_path / "run")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = export(cfg)
    assert not [str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)]
    for fmt in ("onnx", "torch_export"):
        assert summary["exports"][fmt]["max_abs_diff"] < 1e-4
    # A shape the export never saw, batch 4, straight through onnxruntime.
    net = load_module(checkpoint).net.eval()
    images = torch.rand(4, 3, 71, 45)
    session = onnxruntime.InferenceSession(str(tmp_path / "export/model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        expected = net(images).numpy()
    assert got.shape == (4, 4, 71, 45) and np.abs(got - expected).max() < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "export/model.onnx")).metadata_props}
    assert meta["class_names"] == ["background", "disc", "square", "triangle"]
    program = torch.export.load(tmp_path / "export/model.pt2").module()
    assert np.abs(program(images).detach().numpy() - expected).max() < 1e-4


def test_evaluate_logs_a_wandb_table_of_predictions(checkpoint, tmp_path):
    out = tmp_path / "eval"
    evaluate(compose_config("evaluate", [f"ckpt_path={checkpoint}", "logger=wandb", "log_table=3"], out))
    (offline_run,) = (out / "wandb").glob("offline-run-*")
    (table,) = (offline_run / "files" / "media" / "table").rglob("*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["name", "image", "pixel_acc"] and len(content["data"]) == 3
