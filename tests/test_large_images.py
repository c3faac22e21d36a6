"""predict.py on images larger than memory: read in bands, blended window by window exactly as the in-memory slide
blends, written as tiled (Geo)TIFFs with the input's georeference; probabilities beside the masks; a broken file
named while the others are written. Untrained cheap models: the tests need decisions, not good ones."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from conftest import compose_config, tiny_train_config
from segkit.bench.large_image import GEO_TAGS, TEST_SPLIT  # a GeoTIFF's tags: EPSG:32633, 0.5 m pixels
from segkit.config import checks
from segkit.data.files import DataError
from segkit.data.rasters import RasterRows
from segkit.reports.predictions import PROBABILITY_FORMATS
from segkit.task_kind import TaskKind
from segkit.tasks.predict import UnreadableInputs, predict
from segkit.training.inference import Inference, stream_windows
from segkit.training.module import build_module, load_module, save_module
from segkit.training.windows import BLENDS

pytestmark = pytest.mark.usefixtures("one_thread")
# A timm test network (a few hundred thousand weights) under FCN: about 1 us a pixel on one core.
CHEAP = ["model=fcn", "backbone.name=test_convnext"]


def save_checkpoint(path: Path, *overrides: str) -> Path:
    return save_module(build_module(tiny_train_config(path.parent / "run", *CHEAP, *overrides)), path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "multiclass": save_checkpoint(folder / "multiclass.ckpt"),
        "binary": save_checkpoint(folder / "binary.ckpt", "data=synthetic_binary"),
    }


def run_predict(checkpoint: Path, source: Path, output: Path, *overrides: str) -> Path:
    base = [
        f"ckpt_path={checkpoint}",
        f"input={source}",
        f"output={output}",
        "num_workers=0",
        "trainer.accelerator=cpu",
    ]
    cfg = compose_config("predict", [*base, *overrides], output.parent / f"{output.name}-run")
    return predict(checks.validate(cfg, "predict"))


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise, so that an untrained network's classes vary across the image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    waves = np.stack([np.sin(x / 23.0 + c) * np.cos(y / 17.0 - c) for c in range(3)], axis=-1)
    return np.clip((waves + 1) * 110 + rng.integers(0, 30, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("blend", ["mean", "gaussian"])
@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_windows_read_in_bands_blend_exactly_like_the_in_memory_slide(blend, task, tmp_path):
    from segkit.models import FCN

    kind = TaskKind(task)
    net = FCN({"name": "test_convnext"}, num_classes=kind.out_channels(3)).eval()
    image = rgb(203, 157)
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(32, 32), photometric="rgb")
    in_memory = Inference(mode="slide", crop_size=(64, 64), blend=blend, window_batch=8)
    expected = in_memory(net, torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, kind)
    windowed = Inference(mode="slide", crop_size=(64, 64), blend=blend, window_batch=3)
    with RasterRows(tmp_path / "image.tif", 3) as rows:
        bands = list(
            stream_windows(
                windowed, net, lambda a, b: torch.from_numpy(rows.rows(a, b)).permute(2, 0, 1), (203, 157), kind
            )
        )
    assert [y0 for y0, _ in bands] == [0, 42, 84, 126, 139] and max(b.shape[1] for _, b in bands) <= 64  # rolling band
    probs = torch.cat([b for _, b in bands], dim=1)[None]
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.equal(kind.decide(probs), kind.decide(expected))


def test_blends_weigh_window_centres_and_the_names_agree_with_the_config_checks():
    from segkit.training.windows import blend_weight

    gaussian = blend_weight((64, 64), "gaussian")
    assert gaussian.max() == 1 and gaussian[0, 0] > 0 and gaussian[31, 31] > gaussian[31, 0] > gaussian[0, 0]
    assert torch.equal(blend_weight((8, 8), "mean"), torch.ones(8, 8))
    assert checks.BLENDS == BLENDS and checks.PROBABILITY_FORMATS == PROBABILITY_FORMATS


def test_bad_blends_thresholds_and_probability_formats_fail_at_start_up_naming_the_key(tmp_path):
    bad = ["inference.blend=cosine", "inference.window_above=0", "probability_format=bf16", "save_probabilities=yes"]
    cfg = compose_config("predict", ["ckpt_path=x", "input=y", *bad], tmp_path)
    with pytest.raises(checks.ConfigError) as caught:
        checks.validate(cfg, "predict")
    for key in (
        "inference.blend='cosine'",
        "inference.window_above=0",
        "probability_format='bf16'",
        "save_probabilities",
    ):
        assert key in str(caught.value)


def test_a_geotiff_is_predicted_window_by_window_into_a_georeferenced_tiled_tiff(checkpoints, tmp_path):
    height, width = 1500, 2000
    source = tmp_path / "in" / "scene.tif"
    source.parent.mkdir()
    with tifffile.TiffWriter(source) as tif:  # streamed: a row of tiles at a time
        tiles = (
            np.ascontiguousarray(
                np.pad(
                    rgb(min(256, height - y), width, seed=y)[:, x : x + 256],
                    [(0, 256 - min(256, height - y)), (0, 256 - min(256, width - x)), (0, 0)],
                )
            )
            for y in range(0, height, 256)
            for x in range(0, width, 256)
        )
        tif.write(
            tiles,
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(256, 256),
            photometric="rgb",
            compression="zlib",
            extratags=GEO_TAGS,
        )
    out = tmp_path / "out"
    run_predict(
        checkpoints["multiclass"],
        source.parent,
        out,
        "inference=slide",
        "inference.crop_size=[256,256]",
        "inference.stride=[256,256]",
        "inference.window_above=1024",
        "save_probabilities=true",
        "probability_format=uint8",
    )
    with tifffile.TiffFile(out / "masks/scene.tif") as mask_file, tifffile.TiffFile(source) as image_file:
        page = mask_file.pages.first
        assert page.is_tiled and page.shape == (height, width) and page.dtype == np.uint8
        assert page.photometric == tifffile.PHOTOMETRIC.PALETTE
        assert page.geotiff_tags == image_file.pages.first.geotiff_tags  # transform and CRS
        assert page.geotiff_tags["GTModelTypeGeoKey"] and page.geotiff_tags["ProjectedCSTypeGeoKey"] == 32633
        mask = page.asarray()
    assert not (out / "overlays").exists()
    # Windows do not overlap here: each is the network's own decision on that window of the file.
    module = load_module(checkpoints["multiclass"])
    full = tifffile.imread(source)
    # The last row and column of windows lie flush with the far edges, at (1244, 1744), over their neighbours: there
    # only the part that no other window covers (from 1280, 1792) is that window's own decision.
    for y, x, top, left in ((0, 0, 0, 0), (768, 1280, 0, 0), (1244, 1744, 1280 - 1244, 1792 - 1744)):
        window = torch.from_numpy(full[y : y + 256, x : x + 256]).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            logits = module(window)[0, :, top:, left:]
        top2 = logits.topk(2, dim=0).values
        clear = (top2[0] - top2[1] > 1e-4).numpy()  # decisions that rounding cannot flip
        assert clear.mean() > 0.99
        own = mask[y + top : y + 256, x + left : x + 256]
        assert np.array_equal(logits.argmax(0).numpy()[clear], own[clear]), (y, x)
    probs = tifffile.imread(out / "probabilities/scene.tif")
    assert probs.shape == (height, width, 4) and probs.dtype == np.uint8
    # Rounding keeps the order of probabilities (ties aside): the mask's class has the highest stored probability.
    assert np.array_equal(np.take_along_axis(probs, mask[..., None], -1)[..., 0], probs.max(-1))
    assert np.abs(probs.astype(int).sum(-1) - 255).max() <= 2  # p x 255, rounded per class


def test_the_windowed_mask_equals_the_in_memory_mask_through_predict(checkpoints, tmp_path):
    source = tmp_path / "in" / "odd.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, rgb(203, 157, seed=3), photometric="rgb", rowsperstrip=5)  # striped
    common = ["inference=slide", "inference.crop_size=[64,64]", "inference.blend=gaussian", "save_probabilities=true"]
    run_predict(checkpoints["binary"], source.parent, tmp_path / "memory", *common)
    run_predict(checkpoints["binary"], source.parent, tmp_path / "windows", *common, "inference.window_above=100")
    in_memory = np.asarray(Image.open(tmp_path / "memory/masks/odd.png"))
    windowed = tifffile.imread(tmp_path / "windows/masks/odd.tif")
    assert windowed.shape == (203, 157) and set(np.unique(windowed)) <= {0, 255}
    assert np.array_equal(windowed, in_memory)
    stored = {}
    for folder in ("memory", "windows"):  # the same probability file either way: the positive class's, float16
        stored[folder] = probs = tifffile.imread(tmp_path / folder / "probabilities/odd.tif")
        assert probs.shape == (203, 157) and probs.dtype == np.float16
        clear = np.abs(probs.astype(np.float32) - 0.5) > 1e-3  # float16 rounds some values onto the threshold
        assert np.array_equal(((probs >= 0.5) * 255)[clear], in_memory[clear])
    assert np.allclose(stored["memory"], stored["windows"], atol=1e-3)


def test_small_images_keep_their_pngs_and_get_probabilities_that_decide_like_the_mask(checkpoints, tmp_path):
    source = tmp_path / "in" / "a.png"
    source.parent.mkdir()
    Image.fromarray(rgb(40, 56, seed=5)).save(source)
    run_predict(checkpoints["multiclass"], source.parent, tmp_path / "out", "save_probabilities=true")
    mask = np.asarray(Image.open(tmp_path / "out/masks/a.png"))
    probs = tifffile.imread(tmp_path / "out/probabilities/a.tif")
    assert probs.shape == (40, 56, 4) and probs.dtype == np.float16
    assert np.abs(probs.astype(np.float32).sum(-1) - 1).max() < 1e-2
    assert np.array_equal(np.take_along_axis(probs, mask[..., None], -1)[..., 0], probs.max(-1))  # ties aside


def test_a_truncated_large_tiff_is_named_and_the_others_are_written(checkpoints, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good", "cut"):
        tifffile.imwrite(folder / f"{name}.tif", rgb(300, 260), tile=(64, 64), photometric="rgb", compression="zlib")
    whole = (folder / "cut.tif").read_bytes()
    (folder / "cut.tif").write_bytes(whole[: len(whole) // 2])  # the header reads, the tiles do not
    with pytest.raises(UnreadableInputs) as caught:
        run_predict(checkpoints["multiclass"], folder, tmp_path / "out", "inference.window_above=100", "batch_size=4")
    assert list(caught.value.failed) == [folder / "cut.tif"] and caught.value.written == 1
    assert f"  - {folder / 'cut.tif'}: cannot be read (" in str(caught.value)
    assert tifffile.imread(tmp_path / "out/masks/good.tif").shape == (300, 260)
    assert not (tmp_path / "out/masks/cut.tif").exists() and not list((tmp_path / "out/masks").glob(".*"))


def test_an_ensemble_averages_its_members_window_probabilities_on_a_large_image(checkpoints, tmp_path):
    """Windows that do not overlap (stride = window): each pixel's ensemble probabilities are its members' own,
    averaged, so the ensemble's saved probabilities equal the mean of each member's alone."""
    saved = torch.load(checkpoints["multiclass"], weights_only=True)
    noise = torch.Generator().manual_seed(0)
    for value in saved["state_dict"].values():  # another model of the same classes: perturbed weights
        if value.is_floating_point():
            value += 0.5 * value.std().nan_to_num() * torch.randn(value.shape, generator=noise)
    other = tmp_path / "other.ckpt"
    torch.save(saved, other)
    source = tmp_path / "in" / "scene.tif"
    source.parent.mkdir()
    tifffile.imwrite(source, rgb(128, 192, seed=5), photometric="rgb", tile=(64, 64))
    windows = ["inference=slide", "inference.crop_size=[64,64]", "inference.stride=[64,64]"]
    large = [*windows, "inference.window_above=100", "save_probabilities=true", "probability_format=float16"]
    alone = []
    for i, checkpoint in enumerate((checkpoints["multiclass"], other)):
        run_predict(checkpoint, source.parent, tmp_path / f"alone{i}", *large)
        alone.append(tifffile.imread(tmp_path / f"alone{i}/probabilities/scene.tif").astype(np.float32))
    run_predict(
        checkpoints["multiclass"],
        source.parent,
        tmp_path / "both",
        *large,
        f"ckpt_path=[{checkpoints['multiclass']},{other}]",
    )
    both = tifffile.imread(tmp_path / "both/probabilities/scene.tif").astype(np.float32)
    assert both.shape == alone[0].shape and np.abs(alone[0] - alone[1]).max() > 0.01  # the members differ
    assert np.allclose(both, (alone[0] + alone[1]) / 2, atol=2e-3)  # float16 storage
    mask = tifffile.imread(tmp_path / "both/masks/scene.tif")
    assert mask.shape == (128, 192)


# evaluate.py on large labelled images: scored window by window, the mask read in the same bands.

LABELS = ("disc", "square", "triangle")  # the multi-label checkpoint's
FACTS = {
    "multiclass": [
        "data.num_classes=4",
        "data.class_names=[background,disc,square,triangle]",
        "data.palette=[[0,0,0],[230,25,75],[60,180,75],[0,130,200]]",
    ],
    "binary": [
        "data.task=binary",
        "data.class_names=[background,disc]",
        "data.mask_encoding=values",
        "data.mask_values=[0,255]",
    ],
    "multilabel": [
        "data.task=multilabel",
        "data.num_classes=3",
        f"data.class_names=[{','.join(LABELS)}]",
        "data.palette=[[230,25,75],[60,180,75],[0,130,200]]",
    ],
}


def labels(height: int, width: int, task: str, seed: int = 0) -> np.ndarray:
    """A mask as stored: blobs of every class (binary: 0/255; multi-label: (H, W, 3) planes of 0/1) with ignored
    (255) pixels except in a binary mask, whose 255 is the positive class."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    field = np.sin(x / 19.0 + seed) + np.cos(y / 13.0 - seed)
    if task == "multilabel":
        planes = np.stack([(np.sin(x / (11.0 + 4 * c)) * np.cos(y / (9.0 + 3 * c)) > 0) for c in range(3)], -1)
        planes = planes.astype(np.uint8)
        planes[rng.random(planes.shape) < 0.02] = 255
        return planes
    if task == "binary":
        return np.where(field > 0.3, 255, 0).astype(np.uint8)
    mask = np.digitize(field, [-0.8, 0.1, 0.9]).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.02] = 255
    return mask


def write_split(root: Path, task: str, sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """images/test/<name> (a tiled TIFF for a large image, PNG for a small one) and their masks as TIFFs (a
    multi-label task's: a folder per label). Returns the stored masks."""
    masks = {}
    (root / "images/test").mkdir(parents=True)
    for seed, (name, (height, width)) in enumerate(sizes.items()):
        image = rgb(height, width, seed=seed)
        if height * width > 100**2:
            tifffile.imwrite(root / f"images/test/{name}.tif", image, tile=(32, 32), photometric="rgb")
        else:
            Image.fromarray(image).save(root / f"images/test/{name}.png")
        masks[name] = mask = labels(height, width, task, seed)
        planes = {".": mask} if task != "multilabel" else {c: mask[..., i] for i, c in enumerate(LABELS)}
        for folder, plane in planes.items():
            path = root / "masks/test" / folder / f"{name}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(path, plane, tile=(16, 16))  # band reads cross tile rows
    return masks


def run_evaluate(checkpoint: Path, root: Path, output: Path, task: str, *overrides: str) -> dict:
    import json

    from segkit.tasks.evaluate import evaluate

    base = [
        f"ckpt_path={checkpoint}",
        *TEST_SPLIT,
        f"data.root={root}",
        "data.num_workers=0",
        "trainer.accelerator=cpu",
        *FACTS[task],
    ]
    cfg = compose_config("evaluate", [*base, *overrides], output)
    metrics = evaluate(checks.validate(cfg, "evaluate"))
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["metrics"] == pytest.approx({k: None if np.isnan(v) else v for k, v in metrics.items()})  # NaN: null
    return saved


def hand_confusion(truth: np.ndarray, pred: np.ndarray, n: int, ignore: int = 255) -> np.ndarray:
    keep = truth != ignore
    return np.bincount(truth[keep].astype(int) * n + pred[keep], minlength=n * n).reshape(n, n)


def test_evaluate_scores_a_large_image_window_by_window_as_the_in_memory_slide_does(checkpoints, tmp_path):
    """A large (tiled TIFF) and a small image in one split: the windowed path's counts plus the small image's
    equal the in-memory slide's over both, and equal a hand count of the saved predictions against the masks."""
    masks = write_split(tmp_path / "data", "multiclass", {"big": (203, 157), "small": (40, 56)})
    windows = ["inference=slide", "inference.crop_size=[64,64]", "inference.blend=gaussian", "save_predictions=true"]
    checkpoint = checkpoints["multiclass"]
    in_memory = run_evaluate(checkpoint, tmp_path / "data", tmp_path / "memory", "multiclass", *windows)
    windowed = run_evaluate(
        checkpoint, tmp_path / "data", tmp_path / "windows", "multiclass", *windows, "inference.window_above=100"
    )
    big = tifffile.imread(tmp_path / "windows/predictions/big.tif")  # the large image's: a tiled TIFF
    assert np.array_equal(big, np.asarray(Image.open(tmp_path / "memory/predictions/big.png")))
    small = np.asarray(Image.open(tmp_path / "windows/predictions/small.png"))
    by_hand = hand_confusion(masks["big"], big, 4) + hand_confusion(masks["small"], small, 4)
    assert windowed["confusion_matrix"] == in_memory["confusion_matrix"] == by_hand.tolist()
    assert windowed["metrics"] == pytest.approx(in_memory["metrics"], nan_ok=True)
    assert by_hand.sum() == sum(int((m != 255).sum()) for m in masks.values())  # every labelled pixel, once


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_a_split_of_large_images_only_is_scored_and_logged_without_an_evaluation_loop(
    task, checkpoints, tmp_path_factory, tmp_path
):
    if task not in checkpoints:
        checkpoints[task] = save_checkpoint(tmp_path_factory.mktemp(task) / f"{task}.ckpt", f"data=synthetic_{task}")
    masks = write_split(tmp_path / "data", task, {"a": (130, 97), "b": (101, 120)})
    saved = run_evaluate(
        checkpoints[task],
        tmp_path / "data",
        tmp_path / "out",
        task,
        "inference.window_above=90",
        "save_predictions=true",
        "logger=csv",
    )
    counts = np.zeros((3, 2, 2) if task == "multilabel" else (2, 2), dtype=np.int64)
    for name, mask in masks.items():
        pred = tifffile.imread(tmp_path / f"out/predictions/{name}.tif")  # binary 0/255, multi-label (H, W, 3) 0/1
        if task == "binary":
            counts += hand_confusion(mask // 255, pred // 255, 2, ignore=-1)
        else:
            for label in range(3):
                counts[label] += hand_confusion(mask[..., label], pred[..., label], 2)
    assert saved["confusion_matrix"] == counts.tolist()
    labelled = sum(int(m.size if task == "binary" else (m != 255).sum()) for m in masks.values())
    assert counts.sum() == labelled  # binary: 255 is the positive class, nothing is ignored
    import csv

    with open(tmp_path / "out/csv/metrics.csv") as file:  # what a loop would have logged
        (logged,) = list(csv.DictReader(file))
    assert float(logged["test/mIoU"]) == pytest.approx(saved["metrics"]["test/mIoU"])


def test_a_large_masks_unknown_value_or_size_is_named_and_the_run_stops(checkpoints, tmp_path):
    root = tmp_path / "data"
    masks = write_split(root, "multiclass", {"big": (203, 157), "other": (150, 90)})
    masks["big"][190, 3] = 7  # far down: the last band finds it
    tifffile.imwrite(root / "masks/test/big.tif", masks["big"], tile=(16, 16))
    with pytest.raises(DataError, match=r"big\.tif: mask values \{7\} \(1 pixels\) are not known"):
        run_evaluate(checkpoints["multiclass"], root, tmp_path / "values", "multiclass", "inference.window_above=100")
    # A mask of another size is refused by the start-up check, from its header, before any window is scored.
    tifffile.imwrite(root / "masks/test/other.tif", masks["other"][:, :80], tile=(16, 16))
    with pytest.raises(DataError, match=r"other\.tif: mask is 150x80 \(HxW\) but its image .*other\.tif is 150x90"):
        run_evaluate(checkpoints["multiclass"], root, tmp_path / "size", "multiclass", "inference.window_above=100")
    assert not (tmp_path / "size/predictions").exists()


def test_evaluate_scores_large_images_in_one_process_and_says_so():
    import lightning as L

    from segkit.errors import Refusal
    from segkit.tasks.evaluate import score_large_images

    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    with pytest.raises(Refusal, match=r"in one process, but this trainer runs 2\. Fix: trainer\.devices=1"):
        score_large_images([object()], build_module(tiny_train_config(Path("unused"))), None, trainer, "val", None)


@pytest.mark.parametrize("stored", ["planes.tif", "pages.tif", "chw.npy", "hwc.npy", "labels"])
def test_a_multilabel_mask_read_in_bands_equals_the_mask_read_whole(stored, tmp_path):
    """Every way a multi-label mask is stored (a band-read TIFF of planes, a multi-page TIFF read whole, an NPY
    stack memory-mapped, a file per label): the bands of `MaskRows` put together are the dataset's own mask."""
    from segkit.data.dataset import Sample, SegmentationFiles
    from segkit.data.encoding import MaskEncoding
    from segkit.data.mask_rows import MaskRows

    planes = labels(70, 45, "multilabel", seed=2)  # (H, W, 3)
    if stored == "planes.tif":
        tifffile.imwrite(tmp_path / stored, planes, tile=(16, 16), planarconfig="contig", photometric="minisblack")
    elif stored == "pages.tif":
        tifffile.imwrite(tmp_path / stored, np.moveaxis(planes, -1, 0), photometric="minisblack")  # 3 pages
    elif stored.endswith(".npy"):
        np.save(tmp_path / stored, planes if stored == "hwc.npy" else np.moveaxis(planes, -1, 0).copy())
    else:
        for i, label in enumerate(LABELS):
            Image.fromarray(planes[..., i]).save(tmp_path / f"{label}.png")
    files = tuple(tmp_path / f"{label}.png" for label in LABELS) if stored == "labels" else ()
    sample = Sample(tmp_path / "image.png", files[0] if files else tmp_path / stored, "image", label_masks=files)
    dataset = SegmentationFiles([sample], MaskEncoding(2, 255), in_channels=3, num_labels=3)
    with MaskRows(sample, dataset, (70, 45)) as mask:
        bands = [mask.rows(y0, min(y0 + 17, 70)) for y0 in range(0, 70, 17)]
        mask.finish()
    assert np.array_equal(np.concatenate(bands, axis=1), dataset.read_mask(sample))
    with pytest.raises(DataError, match="mask is 70x45 \\(HxW\\) but its image"):
        MaskRows(sample, dataset, (71, 45))


def test_a_mask_with_overviews_is_read_in_bands_from_its_full_size_page(tmp_path):
    """A cloud-optimized GeoTIFF's reduced levels are not a stack of planes: its first page is read band by band."""
    from segkit.data.dataset import Sample, SegmentationFiles
    from segkit.data.encoding import MaskEncoding
    from segkit.data.mask_rows import MaskRows

    mask = labels(90, 70, "multiclass", seed=4)
    with tifffile.TiffWriter(tmp_path / "mask.tif") as tif:
        tif.write(mask, tile=(16, 16), subfiletype=0)
        tif.write(mask[::2, ::2], tile=(16, 16), subfiletype=1)  # an overview
    with RasterRows(tmp_path / "mask.tif", None) as raster:
        assert not raster.stacked
    sample = Sample(tmp_path / "image.png", tmp_path / "mask.tif", "image")
    dataset = SegmentationFiles([sample], MaskEncoding(4, 255), in_channels=3)
    with MaskRows(sample, dataset, (90, 70)) as rows:
        bands = [rows.rows(y0, min(y0 + 40, 90)) for y0 in range(0, 90, 40)]
    assert np.array_equal(np.concatenate(bands), dataset.read_mask(sample))
