"""The LightningDataModule every dataset shares: loaders, and the class facts the model and metrics need."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from segkit.data.dataset import collate
from segkit.data.files import DataError
from segkit.data.presence import ItemMasks, cache_path, fingerprint, load_presence, measure_presence, save_presence
from segkit.data.sampling import ClassBalancedSampler, EpochSampler, RepeatFactors, repeat_factors
from segkit.machine import default_pin_memory, resolve_num_workers
from segkit.task_kind import TaskKind

SPLITS = ("train", "val", "test")
# The splits each Lightning stage loads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
SAMPLINGS = ("uniform", "class_balanced")

log = logging.getLogger(__name__)


def run_splits(stage: str | None, test: bool = False) -> tuple[str, ...]:
    """The splits a run loads, so must find present and sound: the stage's, plus the test split for fitting when
    train.py's `test: true` scores it afterwards. The data check and the start-up guard both ask this, so they
    agree on which splits may stop a run."""
    splits = STAGE_SPLITS.get(stage, SPLITS) if stage is not None else SPLITS
    return splits + ("test",) if stage == "fit" and test and "test" not in splits else splits


def loader_settings(num_workers: int | str, pin_memory: bool | None, trainer: Any = None) -> tuple[int, bool]:
    """(workers, pinned memory) of this process's loaders from `data.num_workers` and `data.pin_memory`: "auto"
    workers and unset pinning follow `trainer` (its processes on this machine, and whether they train on CUDA GPUs),
    or without one a single process on whatever this machine has (segkit.machine)."""
    processes, gpu = 1, None
    if trainer is not None:
        processes, gpu = trainer.num_devices, isinstance(trainer.accelerator, CUDAAccelerator)
    workers = resolve_num_workers(num_workers, processes=processes, gpu=gpu)
    return workers, default_pin_memory(gpu) if pin_memory is None else pin_memory


class SegDataModule(L.LightningDataModule):
    """What every dataset shares: the class facts, the loaders (their workers, shuffling and augmentation seeds that
    resume exactly) and the splits a run loads. Subclasses implement `make_dataset(split)`, returning items
    `{"image": float (C,H,W) in [0,1], "mask": long (H,W)}`; everything else lives here.

    Args:
        num_classes: how many classes, at least 2: the one place a run's class facts are defined (model, loss and
            metric configs interpolate `${data.num_classes}` and the rest).
        class_names: one name per class.
        palette: one RGB colour per class (masks written, pictures drawn).
        in_channels: channels of the images.
        ignore_index: mask value of pixels that count for nothing (void, padding).
        batch_size: training batch size.
        eval_batch_size: validation and test batch size (default: `batch_size`).
        num_workers: loader processes, or "auto": this machine's usable CPUs split between the training processes
            of the Trainer the datamodule is attached to, at most 8 each (2 on a CPU run; segkit.machine).
        pin_memory: page-locked batches; None: when the Trainer trains on CUDA GPUs.
        crop_size: (H, W) of training images (the crop the augmentation pipelines take).
        task: what a pixel's label is (segkit.task_kind): "multiclass" (masks of class ids), "binary" (class ids
            0 and 1 of the negative and positive class) or "multilabel" (masks (C, H, W), 1 per label a pixel has).
        sampling: the training draws: "uniform" (every image once an epoch, shuffled) or "class_balanced" (images
            holding rare classes more often: repeat-factor sampling, `segkit.data.sampling.ClassBalancedSampler`).
        sampling_threshold: with class_balanced, a class in a share f < threshold of the training images repeats its
            images sqrt(threshold / f) times as often (before the epoch is scaled back to the split's size).
        sampling_cache: the folder of the class-presence cache that class_balanced measures once (None: measured at
            every start); the configs put it under `${paths.log_dir}/cache`.

    Example:
        >>> from segkit.data import SegDataModule
        >>> class Mine(SegDataModule):
        ...     def make_dataset(self, split):
        ...         return my_dataset(split)  # items {"image": (C, H, W) in [0, 1], "mask": (H, W) class ids}
        >>> Mine(num_classes=2, class_names=["bg", "fg"], palette=[[0, 0, 0], [255, 255, 255]])  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str],
        palette: Sequence[Sequence[int]],
        in_channels: int = 3,
        ignore_index: int = 255,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | None = None,
        crop_size: Sequence[int] | None = None,
        task: str = "multiclass",
        sampling: str = "uniform",
        sampling_threshold: float = 0.1,
        sampling_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.task = TaskKind(task)
        self.task.check_classes(num_classes, class_names)
        if sampling not in SAMPLINGS:
            raise ValueError(f"data.sampling={sampling!r} is not one of {SAMPLINGS}.")
        if not sampling_threshold > 0:
            raise ValueError(f"data.sampling_threshold must be > 0, got {sampling_threshold}.")
        if len(class_names) != num_classes or len(palette) != num_classes:
            raise ValueError(
                f"data.num_classes is {num_classes} but data.class_names has {len(class_names)} entries and "
                f"data.palette {len(palette)}. Fix: give one name and one RGB colour per class."
            )
        self.num_classes = num_classes
        self.class_names = list(class_names)
        self.palette = [list(c) for c in palette]
        self.in_channels = in_channels
        self.ignore_index = ignore_index
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        # "auto": the machine's usable CPUs split between its training processes (segkit.machine); batches in pinned
        # memory when training on a CUDA GPU, copied with non_blocking=True (Lightning's batch_to_device). Decided here
        # for one process, and again in `setup` for the Trainer the datamodule is attached to.
        self._loader_config = (num_workers, pin_memory)
        self.num_workers, self.pin_memory = loader_settings(num_workers, pin_memory)
        self.crop_size = list(crop_size) if crop_size else None
        self.sampling = sampling
        self.sampling_threshold = float(sampling_threshold)
        self.sampling_cache = sampling_cache
        self._sampling_weights: np.ndarray | None = None  # class_balanced: one weight per training draw, measured once
        self.datasets: dict[str, Dataset] = {}
        # Set by train.py from its `test` key: fitting then sets up (and verifies) the test split too, so a missing
        # test split stops the run at start-up, not after training.
        self.test_after_fit = False
        # Shuffling and augmentation follow this seed (the run's, from seed_everything); it travels in checkpoints.
        self.sampling_seed = int(os.environ.get("PL_GLOBAL_SEED", random.randrange(2**31)))
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained) after a mid-epoch stop

    def make_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:  # the run's processes on this machine and their device: its Trainer's
            self.num_workers, self.pin_memory = loader_settings(*self._loader_config, trainer=self.trainer)
        for split in run_splits(stage, self.test_after_fit):
            if split not in self.datasets:
                self.datasets[split] = self.make_dataset(split)

    def empty_split_message(self, split: str) -> str:
        """Why `split` has no sample and what to do; datasets on disk name their folder and what they searched."""
        return (
            f"The {split} split of {type(self).__name__} is empty. Fix: check the data config "
            f"(python check_data.py shows what it finds), or run with test=false if there is no test split."
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise DataError(self.empty_split_message(split), kind="empty split")
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        sampler = None
        if shuffle:
            if self.sampling == "class_balanced":
                if self._sampling_weights is None or len(self._sampling_weights) != len(dataset):
                    self._sampling_weights = self.sampling_weights(split)
                sampler = ClassBalancedSampler(self._sampling_weights, self.sampling_seed)
            else:
                sampler = EpochSampler(len(dataset), self.sampling_seed)
            if self._resume_at is not None:
                # Lightning sets the epoch only after the loader's first iterator exists, and workers fetch ahead.
                epoch, batches = self._resume_at
                sampler.set_epoch(epoch)
                sampler.skip(epoch, batches * batch_size)
                self._resume_at = None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            # BatchNorm cannot train on a batch of one: never end an epoch with a lone sample.
            drop_last=shuffle and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
            worker_init_fn=_init_worker,
            # Worker seeds from the loader's own generator: loaders never draw from the global random state that
            # the model's dropout uses, so a resumed run's stream stays the uninterrupted run's.
            generator=torch.Generator().manual_seed(self.sampling_seed),
        )

    def presence_masks(self, split: str) -> Dataset:
        """The split's masks as they are stored (not augmented), one item per image: what class_balanced measures.
        Here the items' masks; datasets on disk read the mask files alone."""
        return ItemMasks(self.datasets[split])

    def presence_facts(self, split: str) -> dict[str, Any] | None:
        """What the split's class presence depends on, fingerprinted for its cache; None: not cached (measured at
        every start, as the synthetic data is: drawing it is as quick as reading a cache)."""
        return None

    def class_presence(self, split: str = "train") -> tuple[np.ndarray, str]:
        """(images, classes) booleans, true where the image holds the class, and where they came from: read from
        the cache, or measured (and cached) now."""
        masks = self.presence_masks(split)
        facts = self.presence_facts(split)
        path = key = None
        if facts is not None and self.sampling_cache:
            key = fingerprint({**facts, "num_classes": self.num_classes, "ignore_index": self.ignore_index})
            path = cache_path(self.sampling_cache, key)
            cached = load_presence(path, key, len(masks), self.num_classes)
            if cached is not None:
                return cached, f"read from {path}"
        start = time.perf_counter()
        presence = measure_presence(masks, self.num_classes, self.num_workers)
        seconds = time.perf_counter() - start
        source = f"measured in {seconds:.1f} s"
        # Every process measures the same; one writes.
        if path is not None and (self.trainer is None or self.trainer.is_global_zero):
            save_presence(path, key, presence, split=split, class_names=self.class_names, measured_in_s=seconds)
            source += f", cached in {path}"
        return presence, source

    def sampling_weights(self, split: str = "train") -> np.ndarray:
        """class_balanced: each draw's repeat factor (`segkit.data.sampling.repeat_factors`), logged with the class
        frequencies it comes from."""
        presence, source = self.class_presence(split)
        factors = repeat_factors(presence, self.sampling_threshold)
        weights = factors.image_factor[np.arange(len(self.datasets[split])) % max(len(presence), 1)]
        log.info(describe_factors(presence, factors, self.class_names, self.sampling_threshold, source))
        return weights

    def state_dict(self) -> dict[str, Any]:
        """The sampling seed and where training stands: the epoch that comes next, and, for a checkpoint written
        mid-epoch (a stop), the batches of it already trained on."""
        state: dict[str, Any] = {"sampling_seed": self.sampling_seed}
        trainer = self.trainer
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            mid_epoch = 0 < done < trainer.num_training_batches
            state["resume_at"] = [trainer.current_epoch, done] if mid_epoch else [trainer.current_epoch + 1, 0]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampling_seed = int(state_dict.get("sampling_seed", self.sampling_seed))
        resume_at = state_dict.get("resume_at")
        self._resume_at = (int(resume_at[0]), int(resume_at[1])) if resume_at else None

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def describe_factors(
    presence: np.ndarray, factors: RepeatFactors, class_names: Sequence[str], threshold: float, source: str
) -> str:
    """One log line: per class the share of images holding it and its repeat factor, and the share of an epoch's
    draws that the rarest class's images get."""
    frequency, factor, image = factors
    classes = ", ".join(f"{name} {f:.1%} x{r:.2f}" for name, f, r in zip(class_names, frequency, factor))
    line = (
        f"class_balanced sampling (threshold {threshold:g}) over {len(image)} training images ({source}); "
        f"class: share of images holding it, repeat factor: {classes}"
    )
    held = np.flatnonzero(frequency > 0)
    if len(held):
        rarest = held[np.argmin(frequency[held])]
        holding = presence[:, rarest]
        drawn = image[holding].sum() / image.sum()
        line += (
            f"; the {int(holding.sum())} images holding the rarest class, {class_names[rarest]} "
            f"({frequency[rarest]:.1%} of the images), get {drawn:.1%} of an epoch's draws "
            f"({drawn / frequency[rarest]:.2f} x uniform's)"
        )
    return line


def _init_worker(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal: workers leave it to the main process, which stops the run
    after the current batch and saves; Lightning's per-worker seeding as usual."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pl_worker_init_function(worker_id)
