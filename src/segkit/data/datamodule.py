"""The LightningDataModule every dataset shares: loaders, and the class facts the model and metrics need."""

from __future__ import annotations

import os
import random
import signal
from typing import Any, Sequence

import lightning as L
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from segkit.data.dataset import collate
from segkit.data.files import DataError
from segkit.data.sampling import EpochSampler
from segkit.machine import default_pin_memory, resolve_num_workers
from segkit.task_kind import TaskKind

SPLITS = ("train", "val", "test")
# The splits each Lightning stage loads.
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


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
    ) -> None:
        super().__init__()
        self.task = TaskKind(task)
        self.task.check_classes(num_classes, class_names)
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


def _init_worker(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal: workers leave it to the main process, which stops the run
    after the current batch and saves; Lightning's per-worker seeding as usual."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pl_worker_init_function(worker_id)
