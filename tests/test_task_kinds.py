"""data.task (binary, multilabel) through every part of a run: the decision and its threshold, per-label counts
against a hand count, the positive class's headline score, multi-label masks on disk in both layouts (and the data
check's view of them), a run that trains, stops, resumes exactly, evaluates, predicts and exports, and a multi-label
model predicting two labels on one pixel."""

import csv
import json
import signal

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import TINY_BACKBONE, TINY_DATA, compose_config
from helpers.fake_data import save
from segkit.data.synthetic import SyntheticShapes
from segkit.task_kind import TaskKind
from segkit.tasks.evaluate import evaluate
from segkit.tasks.export import OUTPUTS, check
from segkit.tasks.predict import predict
from segkit.tasks.train import train
from segkit.training.inference import Inference
from segkit.training.metrics import LabelConfusion, named_scores, scores_from_confusion
from segkit.training.module import load_module

IGNORE = 255
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread is faster
LABELS = ["disc", "square", "triangle"]


def test_the_task_decides_channels_probabilities_and_predictions():
    binary, multilabel = TaskKind("binary"), TaskKind("multilabel")
    assert (binary.out_channels(2), multilabel.out_channels(3), TaskKind().out_channels(4)) == (1, 3, 4)
    logits = torch.tensor([-1.0, 0.0, 0.4, 3.0]).view(1, 1, 1, 4)
    probs = binary.probabilities(logits)
    assert torch.allclose(probs.sum(1), torch.ones(1, 1, 4)) and torch.allclose(probs[:, 1], logits[:, 0].sigmoid())
    assert binary.decide(probs, 0.5).tolist() == [[[0, 1, 1, 1]]]  # a probability of exactly 0.5 reaches 0.5
    assert binary.decide(probs, 0.55).tolist() == [[[0, 0, 1, 1]]]  # sigmoid(0.4) = 0.599
    both = multilabel.decide(multilabel.probabilities(torch.tensor([2.0, 1.0, -3.0]).view(1, 3, 1, 1)), 0.5)
    assert both.view(-1).tolist() == [1, 1, 0]  # two labels on one pixel
    with pytest.raises(ValueError, match="data.task=binary needs data.num_classes=2"):
        binary.check_classes(3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="inference.threshold=1.0 must lie strictly between 0 and 1"):
        Inference(threshold=1.0)


def test_label_counts_and_scores_equal_a_hand_count():
    # One image, 2 labels, 2 x 3 pixels; label 1 unknown on two pixels.
    target = torch.tensor([[[[1, 1, 0], [0, 0, 1]], [[0, 1, IGNORE], [IGNORE, 1, 1]]]])
    preds = torch.tensor([[[[1, 0, 0], [1, 0, 1]], [[1, 1, 1], [0, 0, 1]]]])
    metric = LabelConfusion(2, IGNORE)
    metric.update(preds, target)
    # label 0: tp 2 (0,0),(1,2); fn 1 (0,1); fp 1 (1,0); tn 2. label 1 (4 known): tp 2, fn 1 (1,1), fp 1 (0,0), tn 0.
    assert metric.compute().tolist() == [[[2, 1], [1, 2]], [[0, 1], [1, 2]]]
    scores = scores_from_confusion(metric.compute())
    assert scores["IoU"].tolist() == pytest.approx([2 / 4, 2 / 4])
    assert scores["Dice"].tolist() == pytest.approx([4 / 6, 4 / 6])
    assert float(scores["pixel_acc"]) == pytest.approx((4 + 2) / 10)  # right (pixel, label) decisions


def test_a_binary_tasks_headline_is_its_positive_class():
    confusion = torch.tensor([[50, 10], [5, 15]])  # rows truth: negative, positive
    flat = named_scores("val", scores_from_confusion(confusion), ["background", "membrane"], "binary")
    assert flat["val/IoU"] == pytest.approx(15 / 30) == flat["val/IoU/membrane"]
    assert flat["val/Precision"] == pytest.approx(15 / 25) and flat["val/Recall"] == pytest.approx(15 / 20)
    assert "val/IoU" not in named_scores("val", scores_from_confusion(confusion), ["a", "b"], "multiclass")


# ----------------------------------------------------------------------------------- multi-label masks on disk


def write_multilabel(root, count=6, size=(40, 52)):
    """The synthetic multi-label shapes as files, in both layouts: a 0/255 PNG per label, and an NPY per image."""
    shapes = SyntheticShapes(count, size, num_classes=3, multilabel=True, seed=3)
    masks = {}
    for i in range(count):
        item = shapes[i]
        image = (item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        mask = item["mask"].numpy().astype(np.uint8)
        masks[str(i)] = mask
        for layout in ("folders", "file"):
            save(root / layout / "images" / f"{i}.png", image)
        for plane, label in zip(mask, LABELS):
            save(root / "folders" / "masks" / label / f"{i}.png", plane * 255)
        (root / "file" / "masks").mkdir(parents=True, exist_ok=True)
        np.save(root / "file" / "masks" / f"{i}.npy", np.moveaxis(mask, 0, -1))  # (H, W, C): either order reads
    return masks


def multilabel_data(root, layout):
    extra = ["data.mask_encoding=values", "data.mask_values=[0,255]"] if layout == "folders" else []
    return [
        "data=folder",
        f"data.root={root / layout}",
        "data.task=multilabel",
        "data.num_classes=3",
        f"data.class_names=[{','.join(LABELS)}]",
        "data.palette=[[230,25,75],[60,180,75],[0,130,200]]",
        f"data.label_layout={layout}",
        f"data.mask_suffix={'.png' if layout == 'folders' else '.npy'}",
        "data.splits={train:0.5,val:0.5}",
        "data.num_workers=0",
        "data.crop_size=[32,32]",
        *extra,
    ]


@pytest.mark.parametrize("layout", ["folders", "file"])
def test_multilabel_masks_load_in_both_layouts_and_augment_plane_by_plane(tmp_path, layout):
    from hydra.utils import instantiate

    masks = write_multilabel(tmp_path)
    cfg = compose_config("train", multilabel_data(tmp_path, layout) + ["augment=geometric"], tmp_path / "run")
    data = instantiate(cfg.data)
    data.setup("fit")
    dataset = data.datasets["train"]
    for index, sample in enumerate(dataset.samples):
        _, mask = dataset.load(index)
        assert mask.shape == (3, 40, 52) and np.array_equal(mask, masks[sample.name])
    # Augmented: the planes move with the image and with each other (here: a crop, maybe flipped or rotated).
    item = dataset[(0, 7)]
    assert item["mask"].shape == (3, 32, 32) and item["image"].shape == (3, 32, 32)
    assert set(item["mask"].unique().tolist()) <= {0, 1, IGNORE}
    source = torch.from_numpy(masks[dataset.samples[0].name]).long()
    assert (
        any(
            torch.equal(item["mask"], torch.rot90(view, k, (1, 2))[:, y : y + 32, x : x + 32])
            for view in (source, source.flip(-1), source.flip(-2))
            for k in range(4)
            for y in range(source.shape[1] - 31)
            for x in range(source.shape[2] - 31)
        )
        or (item["mask"] == IGNORE).any()
    )  # rotations may pad with ignore


def test_multilabel_files_that_do_not_fit_are_named_with_their_fix(tmp_path):
    from hydra.utils import instantiate

    from segkit.data.files import DataError

    write_multilabel(tmp_path, count=3)
    (tmp_path / "folders" / "masks" / "square" / "1.png").unlink()
    np.save(tmp_path / "file" / "masks" / "2.npy", np.zeros((40, 52, 2), np.uint8))  # two planes for three labels
    save(tmp_path / "folders" / "masks" / "disc" / "2.png", np.full((40, 52), 7, np.uint8))  # neither 0 nor 255
    cfg = compose_config("train", multilabel_data(tmp_path, "folders"), tmp_path / "run")
    with pytest.raises(DataError, match=r"1.png: no mask; expected a mask per label, .*masks/square/1.png") as found:
        instantiate(cfg.data).setup("fit")
    assert "masks/disc/2.png: mask values {7}" in str(found.value) and "data.mask_values" in str(found.value)
    cfg = compose_config("train", multilabel_data(tmp_path, "file"), tmp_path / "run")
    with pytest.raises(DataError, match=r"2.npy: a multi-label mask of shape \(40, 52, 2\); expected 3 planes"):
        instantiate(cfg.data).setup("fit")


def test_the_data_check_counts_each_labels_pixels(tmp_path):
    from conftest import ROOT, run_entry

    masks = write_multilabel(tmp_path)
    args = [*multilabel_data(tmp_path, "folders"), "test=false"]
    proc = run_entry(str(ROOT / "check_data.py"), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (report_dir,) = (tmp_path / "logs" / "check_data" / "runs").iterdir()
    report = json.loads((report_dir / "report.json").read_text())
    splits = [report["splits"][split]["class_pixels"] for split in ("train", "val")]
    counted = {label: sum(pixels[label] for pixels in splits) for label in LABELS}
    assert counted == {label: int(sum(m[c].sum() for m in masks.values())) for c, label in enumerate(LABELS)}


# ----------------------------------------------------------------------------------- a whole run in each task

TASK_DATA = {"binary": ["data=synthetic_binary"], "multilabel": ["data=synthetic_multilabel"]}


def run_args(task):
    return [
        *TASK_DATA[task],
        *TINY_DATA,
        TINY_BACKBONE,
        "logger=csv",
        "test=false",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "trusted_modules=[helpers.interrupt]",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_a_task_trains_resumes_exactly_evaluates_predicts_and_exports(tmp_path, task):
    args = run_args(task)
    whole = tmp_path / "whole"
    train(compose_config("train", args, whole))
    # Stopped by SIGTERM mid-epoch 2 (2 steps an epoch), then resumed: the same history, byte for byte.
    stopped = tmp_path / "stopped"
    kill = ["+callbacks.interrupt._target_=helpers.interrupt.KillAtStep", "+callbacks.interrupt.step=3"]
    with pytest.raises(SystemExit):
        train(compose_config("train", args + kill + [f"+callbacks.interrupt.signum={int(signal.SIGTERM)}"], stopped))
    (stopped / ".hydra").mkdir(parents=True, exist_ok=True)
    (stopped / ".hydra" / "overrides.yaml").write_text("\n".join(f"- {a}" for a in args) + "\n")
    train(compose_config("train", args + [f"ckpt_path={stopped}"], stopped))
    history = (whole / "csv" / "metrics.csv").read_text()
    assert (stopped / "csv" / "metrics.csv").read_text() == history
    if task == "binary":
        assert "val/IoU," in history.splitlines()[0] + "," and "val/IoU/disc" in history

    checkpoint = whole / "checkpoints" / "last.ckpt"
    module = load_module(checkpoint)
    images = torch.rand(2, 3, 40, 56)
    logits = module.net(images)
    assert logits.shape[1] == (1 if task == "binary" else 3)  # a binary network: one output, the positive class's

    scores = evaluate(compose_config("evaluate", [f"ckpt_path={checkpoint}", "save_predictions=true"], tmp_path / "e"))
    assert (scores.get("val/IoU") is not None) == (task == "binary")
    with open(tmp_path / "e" / "confusion_matrix.csv") as f:
        header = next(csv.reader(f))
    assert header == (["label", "tn", "fp", "fn", "tp"] if task == "multilabel" else header)

    # predict: binary 0/255 PNGs; multilabel a 0/255 PNG per label, or one TIFF with a 0/1 page per label.
    inputs = tmp_path / "inputs"
    for i, image in enumerate(images):
        save(inputs / f"{i}.png", (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    read_back = torch.stack([torch.from_numpy(np.array(Image.open(inputs / f"{i}.png"))) for i in range(2)])
    expected = module.task.predict(module.net(read_back.permute(0, 3, 1, 2).float() / 255)).numpy()
    out = tmp_path / "predicted"
    predict(compose_config("predict", [f"ckpt_path={checkpoint}", f"input={inputs}", f"output={out}"], tmp_path / "p"))
    if task == "binary":
        written = np.stack([np.asarray(Image.open(out / "masks" / f"{i}.png")) for i in range(2)])
        assert set(np.unique(written)) <= {0, 255} and np.array_equal(written // 255, expected)
    else:
        planes = [[np.asarray(Image.open(out / "masks" / label / f"{i}.png")) for label in LABELS] for i in range(2)]
        assert np.array_equal(np.asarray(planes) // 255, expected)
        tiff = tmp_path / "tiff"
        overrides = [f"ckpt_path={checkpoint}", f"input={inputs}", f"output={tiff}", "label_format=tiff"]
        predict(compose_config("predict", overrides, tmp_path / "p2"))
        assert np.array_equal(np.stack([tifffile.imread(tiff / "masks" / f"{i}.tif") for i in range(2)]), expected)
        assert (out / "overlays" / "0.png").is_file()

    # What export.py checks an exported file by: the task's decisions, from the one-channel logits (a file that
    # returns them exactly agrees everywhere; one whose logits flip sign does not). The export mechanics of every
    # decoder are test_decoders.py's and test_deploy.py's.
    shapes = [[1, 40, 56], [2, 33, 47]]
    exact = check(module.net, lambda x: module.net(x).detach().numpy(), shapes, 3, module.task)
    flipped = check(module.net, lambda x: -module.net(x).detach().numpy(), shapes, 3, module.task)
    assert all(c["prediction_agreement"] == 1.0 for c in exact)
    assert all(c["prediction_agreement"] < 1.0 for c in flipped)
    assert ("sigmoid" in OUTPUTS[task]) == (task != "multiclass")


@pytest.mark.slow
def test_a_multilabel_model_predicts_two_labels_on_one_pixel(tiny_train_cfg):
    from hydra.utils import instantiate

    from segkit.training.module import build_module

    cfg = tiny_train_cfg("data=synthetic_multilabel", "model=fcn", "scheduler=none", "optimizer.lr=0.003")
    module = build_module(cfg)
    data = instantiate(cfg.data)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    overlap = batch["mask"].sum(1) >= 2
    assert overlap.any()  # the data has pixels with two labels
    optimizer = module.configure_optimizers()
    module.train()
    for _ in range(40):
        loss = module.criterion(module(batch["image"]), batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module.eval()
    with torch.no_grad():
        predicted = module.task.predict(module(batch["image"]))
    both = predicted.sum(1) >= 2
    assert (both & overlap).sum() > 0.5 * overlap.sum(), (int((both & overlap).sum()), int(overlap.sum()))


def test_a_loss_that_does_not_fit_the_task_stops_the_run_at_start_up(tiny_train_cfg, tmp_path):
    from conftest import ROOT, run_entry
    from segkit.training.module import build_module

    proc = run_entry(str(ROOT / "train.py"), "loss=bce", *TINY_DATA, "logger=csv", cwd=tmp_path, full_error=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        "BinaryCrossEntropyLoss does not apply to data.task=multiclass" in proc.stderr and "Fix: loss=ce" in proc.stderr
    )
    assert build_module(tiny_train_cfg("loss=bce", "data=synthetic_binary")).net.num_classes == 1


# The multi-label settings that data=lists shares with data=folder.
LIST_KEYS = {
    "data.task",
    "data.num_classes",
    "data.class_names",
    "data.palette",
    "data.label_layout",
    "data.num_workers",
    "data.crop_size",
    "data.mask_encoding",
    "data.mask_values",
}


@pytest.mark.parametrize("layout", ["folders", "file"])
def test_multilabel_list_files_name_a_mask_per_label_or_one_file_of_planes(tmp_path, layout):
    from hydra.utils import instantiate

    from segkit.data.files import DataError

    masks = write_multilabel(tmp_path, count=4)
    root = tmp_path / layout
    for split, keys in (("train", "012"), ("val", "3")):
        lines = []
        for key in keys:
            if layout == "folders":
                lines.append(" ".join([f"images/{key}.png", *(f"masks/{label}/{key}.png" for label in LABELS)]))
            else:
                lines.append(f"images/{key}.png masks/{key}.npy")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    data_cfg = [
        "data=lists",
        f"data.root={root}",
        "data.lists={train:train.txt,val:val.txt,test:null}",
        *[o for o in multilabel_data(tmp_path, layout) if o.split("=")[0] in LIST_KEYS],
    ]
    data = instantiate(compose_config("train", data_cfg, tmp_path / "run").data)
    data.setup("fit")
    for split, keys in (("train", "012"), ("val", "3")):
        dataset = data.datasets[split]
        assert [s.name for s in dataset.samples] == [f"images/{key}" for key in keys]
        for index, key in enumerate(keys):
            assert np.array_equal(dataset.load(index)[1], masks[key])
    if layout == "file":  # one mask named where every label's is expected: the line and the fix
        data_cfg.append("data.label_layout=folders")
        with pytest.raises(
            DataError,
            match=r"train.txt:1: expected `image mask_disc mask_square mask_triangle`.*"
            r"Fix: data.label_layout=file",
        ):
            instantiate(compose_config("train", data_cfg, tmp_path / "run").data).setup("fit")


@pytest.mark.slow
def test_a_binary_run_can_keep_its_best_checkpoint_by_the_positive_class_iou(tiny_train_cfg, tmp_path):
    """docs/tasks.md's recipe: `callbacks.model_checkpoint.monitor=val/IoU` keeps the epoch whose positive-class IoU
    is highest (the default follows val/mIoU, the mean with the background's)."""
    cfg = tiny_train_cfg(
        "data=synthetic_binary", TINY_BACKBONE, "trainer.max_epochs=3", "callbacks.model_checkpoint.monitor=val/IoU"
    )
    train(cfg)
    with open(tmp_path / "run" / "csv" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("val/IoU")]
    iou = [float(row["val/IoU"]) for row in rows]
    miou = [float(row["val/mIoU"]) for row in rows]
    assert len(iou) == 3 and max(iou) != max(miou)  # what the two monitors would keep differs in score
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    (state,) = [s for key, s in last["callbacks"].items() if "val/IoU" in key]
    assert float(state["best_model_score"]) == pytest.approx(max(iou))
    assert f"best-epoch{iou.index(max(iou)):03d}-" in state["best_model_path"]
