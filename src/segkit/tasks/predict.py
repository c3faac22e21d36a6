"""Predict masks for image files with a trained checkpoint: palette PNGs and overlays, batched, on a GPU if any.

An input that cannot be read (or whose mask cannot be written) does not stop the others: every other mask is
written, then `UnreadableInputs` lists each failed file with its reason (predict.py exits with status 1)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from segkit.data.inputs import ImageBatches, ImageFiles, find_images, read_failure
from segkit.errors import Refusal
from segkit.reports.predictions import MaskWriter
from segkit.runs.console import quiet_known_noise
from segkit.runs.model_files import model_files
from segkit.tasks.common import checkpoint_argument, plain
from segkit.training.ensemble import load_models


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

    def write(self, images: Any, preds: Any, names: Any) -> None:
        for i, name in enumerate(names):
            try:
                super().write(images[i : i + 1], preds[i : i + 1], [name])
            except (OSError, ValueError) as err:
                self.failed[name] = f"its mask cannot be written as {self.mask_path(name)} ({err})."
            else:
                self.done.add(name)


def predict(cfg: DictConfig) -> Path:
    files = find_images(cfg.input)  # before the checkpoint: a wrong input fails at once
    quiet_known_noise()
    # One checkpoint, or an ensemble (several, a run or a sweep directory): the first's data facts, every member's
    # probabilities averaged (segkit.training.ensemble).
    paths = model_files(checkpoint_argument(cfg.ckpt_path))
    module = load_models(paths, plain(cfg.inference), trusted=cfg.get("trusted_modules") or ())
    data = module.hparams.data
    in_channels = int(data["in_channels"])
    batches = ImageBatches(ImageFiles(files, in_channels, data.get("image_max_value")), cfg.batch_size)
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
    )
    if len(batches):
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[writer])
        with warnings.catch_warnings():  # workers each take every n-th batch: the length holds
            warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    print(f"{writer.written} masks ({module.inference}) in {output / 'masks'}")
    failed = dict(batches.failed)
    for path, name in files:
        if path not in failed and name not in writer.done:
            failed[path] = writer.failed.get(name) or read_failure(path, in_channels)
    if failed:
        raise UnreadableInputs(failed, writer.written, output / "masks")
    return output
