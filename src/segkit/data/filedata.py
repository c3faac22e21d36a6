"""Datasets on disk, whatever their layout: `FileDataModule` holds the mask encoding, the augmentation pipelines
and the start-up check of every file; a layout (segkit.data.layouts) only says which files pair up in which split.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch.utils.data import Dataset

from segkit.data.datamodule import SPLITS, SegDataModule
from segkit.data.dataset import Sample, SegmentationFiles
from segkit.data.encoding import MaskEncoding
from segkit.data.files import DataError
from segkit.data.folds import FoldSettings, assign_folds, fold_settings, groups_by_pattern, groups_from_file
from segkit.data.presence import file_stats
from segkit.data.rasters import split_by_size
from segkit.data.scan import Problem, SplitReport, class_warnings, header_problems, scan_split
from segkit.data.transforms import SeededPipeline, build_pipeline

log = logging.getLogger(__name__)

VERIFY_MODES = ("quick", "full", "off")
LABEL_LAYOUTS = ("folders", "file")
MAX_PROBLEMS_SHOWN = 12
FOLDED_SPLITS = ("train", "val")  # the training pool k-fold cuts; the test split stays as it is


class FileDataModule(SegDataModule):
    """What every on-disk layout shares: mask encoding, augmentation pipelines and the start-up check of every
    file (a broken dataset stops a run before it trains, naming each file). Subclasses implement
    `find_samples(split) -> (samples, problems)`; `FolderDataModule` and `ListFileDataModule` are two.

    Args:
        root: the dataset's folder.
        mask_encoding: how stored mask values become class ids: "index" (the value is the class id), "values"
            (`mask_values[i]` is stored for class i), "label_map" (a table stored id -> class id or ignore_index)
            or "rgb" (`mask_colors`, or the palette, one colour per class).
        mask_values: for "values", e.g. [0, 255].
        label_map: for "label_map", every stored id listed.
        mask_colors: for "rgb" (default: the palette).
        ignore_color: for "rgb", the colour of ignored pixels.
        reduce_zero_label: for "index", 0 becomes ignored and the rest shift down by one (ADE20K).
        train_transforms: the training pipeline (albumentations configs, `${augment.train}`).
        eval_transforms: the validation and test pipeline (`${augment.eval}`).
        image_max_value: integer images are scaled by their dtype's range; set e.g. 4095 for 12-bit data.
        repeat: the train split listed that many times per epoch (small datasets: more random crops between
            validations).
        verify: the start-up check: "quick" (pairs and headers of every file, some decoded), "full" or "off".
        num_folds: k-fold cross-validation (segkit.data.folds): the training pool (what the train and val splits
            would hold) cut into this many folds; None: off, the splits as they are.
        fold: with num_folds, the fold that validates (0..num_folds-1); the other folds train, the test split is
            untouched.
        fold_group: with num_folds, a regular expression searched in each image's key whose first group names its
            group (e.g. `^(patient\\d+)_`): a group's images stay in one fold.
        fold_group_file: with num_folds, a text file (relative to root) of `key group` lines, instead of fold_group.
        fold_seed: the shuffle of the sorted keys that cuts the folds (the layouts pass their `split_seed`).
        label_layout: a multi-label task's masks (`task: multilabel`): "folders", a mask per label and image,
            `<mask_dir>/<label>/<key><mask_suffix>` with the labels' names from class_names; or "file", one file per
            image holding every label's plane (`mask_suffix` .tif/.tiff, multi-page or multi-band, or .npy), (C, H,
            W) or (H, W, C). Each plane's values are encoded with mask_encoding (index: 0/1; values: e.g. [0, 255]).
        **common: `SegDataModule`'s arguments (class facts, batch sizes, workers, `crop_size`).

    Example:
        >>> from segkit.data import FileDataModule
        >>> class Pairs(FileDataModule):
        ...     def find_samples(self, split):
        ...         return my_pairs(self.root, split), []  # [Sample(image, mask, key)], problems
    """

    def __init__(
        self,
        root: str,
        mask_encoding: str = "index",
        mask_values: Sequence[int] | None = None,
        label_map: Mapping[int, int] | None = None,
        mask_colors: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        reduce_zero_label: bool = False,
        train_transforms: Sequence[Any] | None = None,
        eval_transforms: Sequence[Any] | None = None,
        image_max_value: float | None = None,
        repeat: int = 1,
        verify: str = "quick",
        label_layout: str = "folders",
        num_folds: int | None = None,
        fold: int = 0,
        fold_group: str | None = None,
        fold_group_file: str | None = None,
        fold_seed: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.folds: FoldSettings | None = fold_settings(num_folds, fold, fold_seed, fold_group, fold_group_file)
        self._fold_pool: dict[str, tuple[list[Sample], list[Problem]]] | None = None
        if verify not in VERIFY_MODES:
            raise ValueError(f"data.verify={verify!r} is not one of {VERIFY_MODES}.")
        if label_layout not in LABEL_LAYOUTS:
            raise ValueError(f"data.label_layout={label_layout!r} is not one of {LABEL_LAYOUTS}.")
        multilabel = self.task.multilabel
        if multilabel and mask_encoding == "rgb":
            raise ValueError(
                "data.task=multilabel takes masks of 0/1 per label, not colours (data.mask_encoding=rgb). Fix: "
                "mask_encoding=index (0/1) or values (e.g. mask_values=[0,255]), with a plane or file per label."
            )
        self.label_layout = label_layout if multilabel else None
        self.root = Path(root).expanduser()
        self.encoding = MaskEncoding(
            2 if multilabel else self.num_classes,  # each label's plane: without (0) or with (1)
            self.ignore_index,
            encoding=mask_encoding,
            values=mask_values,
            label_map=label_map,
            colors=mask_colors or (self.palette if mask_encoding == "rgb" else None),
            ignore_color=ignore_color,
            reduce_zero_label=reduce_zero_label,
        )
        self.pipelines = {"train": build_pipeline(train_transforms), "eval": build_pipeline(eval_transforms)}
        self.image_max_value = image_max_value
        self.repeat = repeat
        self.verify = verify
        self.problems: dict[str, list[Problem]] = {}  # pairing problems found while listing each split
        # evaluate.py's large images: samples whose image size (H, W) this says is large are set aside from the val
        # and test datasets, into `large`, to be scored window by window; the start-up check reads their headers.
        self.set_aside_large: Callable[[tuple[int, int]], bool] | None = None
        self.large: dict[str, list[Sample]] = {}

    def find_samples(self, split: str) -> tuple[list[Sample], list[Problem]]:
        raise NotImplementedError

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} is not a folder. Fix: pass the dataset's folder, e.g. data.root=/path/to/data."
            )

    def make_dataset(self, split: str, augment: bool = True) -> SegmentationFiles:
        self.check_root()
        folded = self.folds is not None and split in FOLDED_SPLITS
        samples, problems = self.fold_samples(split) if folded else self.find_samples(split)
        self.problems[split] = problems
        if self.set_aside_large is not None and split != "train":
            samples, self.large[split] = split_by_size(samples, lambda sample: sample.image, self.set_aside_large)
        pipeline = self.pipelines["train" if split == "train" else "eval"] if augment else None
        return SegmentationFiles(
            samples,
            self.encoding,
            self.in_channels,
            transform=SeededPipeline(pipeline) if pipeline is not None else None,
            image_max_value=self.image_max_value,
            repeat=self.repeat if split == "train" else 1,
            num_labels=self.num_classes if self.task.multilabel else None,
        )

    def fold_samples(self, split: str) -> tuple[list[Sample], list[Problem]]:
        """With k-fold on, the train or val split: the pool (what `find_samples` gives both) cut into folds once,
        fold `fold` validating. The pool's listing problems go with the train split, so they are reported once."""
        if self._fold_pool is None:
            self._fold_pool = self._cut_folds()
        return self._fold_pool[split]

    def _cut_folds(self) -> dict[str, tuple[list[Sample], list[Problem]]]:
        folds = self.folds
        pool, problems = [], []
        for split in FOLDED_SPLITS:
            found, listed = self.find_samples(split)
            pool += found
            problems += listed
        if not pool:  # nothing to cut: the data check says why the splits are empty
            return {"train": ([], problems), "val": ([], [])}
        counts: dict[str, int] = {}
        for sample in pool:
            counts[sample.name] = counts.get(sample.name, 0) + 1
        # A key twice in the pool (the same name in a train and a val folder): told apart by the image's path.
        ids = [s.name if counts[s.name] == 1 else str(s.image) for s in pool]
        files = [str(s.image) for s in pool]
        keys = [s.name for s in pool]
        groups = None
        if folds.group:
            groups = groups_by_pattern(keys, folds.group, files)
        elif folds.group_file:
            groups = groups_from_file(keys, self.root / folds.group_file, files)
        assigned = assign_folds(ids, folds.num_folds, folds.seed, groups)
        order = sorted(range(len(pool)), key=lambda i: ids[i])
        val = [pool[i] for i in order if assigned[i] == folds.fold]
        train = [pool[i] for i in order if assigned[i] != folds.fold]
        grouped = f" in {len(set(groups))} groups" if groups is not None else ""
        log.info(
            "k-fold: %s: %d images train, %d validate, of a pool of %d%s (seed %d); the test split is untouched.",
            folds.describe(),
            len(train),
            len(val),
            len(pool),
            grouped,
            folds.seed,
        )
        return {"train": (train, problems), "val": (val, [])}

    def setup(self, stage: str | None = None) -> None:
        new = [split for split in SPLITS if split not in self.datasets]
        super().setup(stage)
        if self.verify != "off":
            self.verify_splits([split for split in new if split in self.datasets], full=self.verify == "full")

    def inspect_split(
        self, split: str, full: bool, dataset: SegmentationFiles | None = None, required: bool = True
    ) -> tuple[SplitReport, list[Problem]]:
        """Counts, sizes, class pixels and every problem of one split (read without augmentation). A split the run
        does not load (`required` false) cannot stop it: its problems are warnings."""
        dataset = dataset if dataset is not None else self.make_dataset(split, augment=False)
        problems = [replace(p) for p in self.problems.get(split, [])]  # copies: marked per call below
        # An empty split stops a run (its loader has nothing to give), whatever else was found while listing it;
        # a listing error (a missing list file) already says why.
        large = self.large.get(split, [])
        if not dataset.samples and not large and not any(p.fatal for p in problems):
            problems.append(Problem(str(self.root), "empty split", self.empty_split_message(split)))
        report, found = scan_split(split, dataset, full=full, num_workers=self.num_workers)
        problems += found + header_problems(large) + class_warnings(report, self.class_names, self.ignore_index)
        for problem in problems:
            problem.split = split
            if problem.fatal and not required:
                problem.fatal = False
                problem.message += f" (A warning only: the run does not load the {split} split.)"
        return report, problems

    def find_problems(
        self, splits: Sequence[str], required: Sequence[str], full: bool
    ) -> tuple[dict[str, SplitReport], list[Problem]]:
        """The one verdict the data check and the start-up guard share: every problem of `splits`, errors (`fatal`)
        only in the `required` ones, the splits the run loads (`datamodule.run_splits`)."""
        reports, problems = {}, []
        for split in splits:
            reports[split], found = self.inspect_split(split, full, self.datasets.get(split), split in required)
            problems += found
        return reports, problems

    def verify_splits(self, splits: list[str], full: bool) -> None:
        """Stops the run before any training step, listing every problem of every split it loads."""
        _, problems = self.find_problems(splits, splits, full)
        for problem in problems:
            if not problem.fatal:
                log.warning("data check, %s split: %s", problem.split, problem)
        fatal = [p for p in problems if p.fatal]
        if fatal:
            raise DataError(format_problems(fatal))

    def presence_masks(self, split: str) -> Dataset:
        return FileMasks(self.datasets[split])

    def presence_facts(self, split: str) -> dict[str, Any]:
        """Every mask file of the split (path, size, modification time) and how masks become class ids."""
        encoding = self.encoding
        return {
            "split": split,
            "masks": file_stats(
                [m for sample in self.datasets[split].samples for m in sample.label_masks or (sample.mask,)]
            ),
            "encoding": [encoding.encoding, sorted(encoding.table.items())],
        }

    def empty_split_message(self, split: str) -> str:
        return (
            f"The {split} split is empty: nothing found for it under data.root={self.root}. Fix: check data.root and "
            f"the split settings (check_data.py lists what it finds)."
        )


class FileMasks(Dataset):
    """The class ids of each mask file of a split (its images are not read), once each however `repeat` lists it."""

    def __init__(self, dataset: SegmentationFiles) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, index: int) -> Any:
        return self.dataset.load_mask(index)


def format_problems(problems: list[Problem]) -> str:
    lines = [f"{len(problems)} problem(s) in the data:"]
    lines += [f"  - {p.split}: {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    lines.append(
        "See every problem with `python check_data.py data=<name> data.root=<folder>` (with this run's "
        "test=...); fix the settings or the files named above (data.verify=off skips this check, at your own risk)."
    )
    return "\n".join(lines)
