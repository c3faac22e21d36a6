"""Predict masks for image files with a trained checkpoint: palette PNGs and overlays, batched, on a GPU if any.

Images with more pixels than `inference.window_above` squared take the windowed path instead: read in bands of
rows, predicted window by window and written as tiled TIFFs as they go (segkit.reports.large_images), under any
inference mode (`whole` becomes windows of the training crop). `save_probabilities=true` writes each image's
per-class probabilities beside its mask, in one format for both paths.

An input that cannot be read (or whose mask cannot be written) does not stop the others: every other mask is
written, then `UnreadableInputs` lists each failed file with its reason (predict.py exits with status 1)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import tifffile
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from segkit.data.files import DataError
from segkit.data.inputs import ImageBatches, ImageFiles, find_images, read_failure
from segkit.data.rasters import split_by_size
from segkit.errors import Refusal
from segkit.reports.large_images import LargeImages, windowed_inference
from segkit.reports.predictions import MaskWriter
from segkit.runs.console import quiet_known_noise
from segkit.runs.model_files import model_files
from segkit.tasks.common import checkpoint_argument, plain
from segkit.training.ensemble import load_models
from segkit.training.module import SegmentationModule

log = logging.getLogger(__name__)


class UnreadableInputs(Refusal, RuntimeError):
    """Raised after every readable input was predicted and written: the inputs that were not, with their reasons."""

    def __init__(self, failed: dict[Path, str], written: int, masks_dir: Path) -> None:
        self.failed, self.written = failed, written
        lines = [
            f"{len(failed)} of {len(failed) + written} input(s) could not be predicted; the other {written} "
            f"mask(s) are in {masks_dir}:"
        ]
        # Each reason without the file's own fix, which speaks of datasets: one fix for all follows.
        for path, reason in failed.items():
            lines.append(f"  - {path}: {reason.removeprefix(f'{path}: ').split(' Fix: ')[0]}")
        lines.append(
            "Fix: re-export or re-download these files (or restore a broken link's target), or move them out of "
            "input; then run again."
        )
        super().__init__("\n".join(lines))


class _Writer(MaskWriter):
    """The mask writer, recording which inputs got their mask; one whose mask cannot be written fails alone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done: set[str] = set()
        self.failed: dict[str, str] = {}

    def write(self, images: Any, preds: Any, names: Any, probs: Any = None) -> None:
        for i, name in enumerate(names):
            try:
                super().write(images[i : i + 1], preds[i : i + 1], [name], None if probs is None else probs[i : i + 1])
            except (OSError, ValueError) as err:
                self.failed[name] = f"its mask cannot be written as {self.mask_path(name)} ({err})."
            else:
                self.done.add(name)


def predict_large(
    files: list[tuple[Path, str]], module: SegmentationModule, trainer: Any, cfg: DictConfig, output: Path
) -> tuple[int, dict[Path, str]]:
    """The windowed path, image after image on the trainer's device and precision: (masks written, failures)."""
    data = module.hparams.data
    windows = windowed_inference(module.inference, data, len(files))
    device = trainer.strategy.root_device
    module.to(device).eval()
    large = LargeImages(
        output / "masks",
        data["palette"],
        module.task,
        probabilities_dir=output / "probabilities" if cfg.get("save_probabilities") else None,
        probability_format=cfg.get("probability_format", "float16"),
    )
    failed: dict[Path, str] = {}
    for path, name in files:
        try:
            large.predict(
                path,
                name,
                module,
                windows,
                int(data["in_channels"]),
                data.get("image_max_value"),
                device,
                trainer.precision_plugin.forward_context,
            )
        except DataError as err:
            failed[path] = str(err)
        except (OSError, ValueError, tifffile.TiffFileError) as err:
            failed[path] = f"its mask cannot be written as {large.mask_path(name)} ({type(err).__name__}: {err})."
    if files:
        print(f"{large.written} large image(s) window by window ({windows}) as tiled TIFFs in {output / 'masks'}")
    return large.written, failed


def predict(cfg: DictConfig) -> Path:
    files = find_images(cfg.input)  # before the checkpoint: a wrong input fails at once
    quiet_known_noise()
    # One checkpoint, or an ensemble (several, a run or a sweep directory): the first's data facts, every member's
    # probabilities averaged (segkit.training.ensemble).
    paths = model_files(checkpoint_argument(cfg.ckpt_path))
    module = load_models(paths, plain(cfg.inference), trusted=cfg.get("trusted_modules") or ())
    data = module.hparams.data
    module.inference.window_batch = int(cfg.batch_size)
    module.keep_probabilities = bool(cfg.get("save_probabilities", False))
    small, large = split_by_size(files, lambda file: file[0], module.inference.is_large)
    in_channels = int(data["in_channels"])
    batches = ImageBatches(ImageFiles(small, in_channels, data.get("image_max_value")), cfg.batch_size)
    loader = DataLoader(batches, batch_size=None, num_workers=cfg.num_workers)
    output = Path(cfg.output)
    writer = _Writer(
        output / "masks",
        data["palette"],
        overlays_dir=output / "overlays" if cfg.overlays else None,
        ignore_index=data.get("ignore_index"),
        task=module.task.name,
        class_names=data["class_names"],
        label_format=cfg.get("label_format", "png"),
        probabilities_dir=output / "probabilities" if module.keep_probabilities else None,
        probability_format=cfg.get("probability_format", "float16"),
    )
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[writer]) if len(batches) or large else None
    if len(batches):
        with warnings.catch_warnings():  # workers each take every n-th batch: the length holds
            warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    print(f"{writer.written} masks ({module.inference}) in {output / 'masks'}")
    written_large, failed = predict_large(large, module, trainer, cfg, output) if large else (0, {})
    failed |= batches.failed
    for path, name in small:
        if path not in failed and name not in writer.done:
            failed[path] = writer.failed.get(name) or read_failure(path, in_channels)
    if failed:
        raise UnreadableInputs(failed, writer.written + written_large, output / "masks")
    return output
