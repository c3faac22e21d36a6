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
from segkit.bench.large_image import GEO_TAGS  # a GeoTIFF's tags: EPSG:32633, 0.5 m pixels
from segkit.config import checks
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
