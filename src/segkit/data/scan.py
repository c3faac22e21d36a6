"""Scanning a dataset's files: what the data check reports and what guards a run at start-up.

A quick scan reads every file's header (pairs, sizes, readability) and decodes up to 64 files per split, spread
over it (all of a small dataset); a full scan decodes everything. Files are read in DataLoader workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from segkit.data.dataset import Sample, SegmentationFiles, check_sizes
from segkit.data.files import DataError, read_size


@dataclass
class Problem:
    path: str
    kind: str  # a short tag: missing mask, unreadable, size mismatch, bad values, unlabelled, empty split ...
    message: str
    fatal: bool = True
    split: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


@dataclass
class SplitReport:
    split: str
    num_samples: int = 0
    decoded: int = 0
    sizes: Counter = field(default_factory=Counter)  # (H, W) -> count
    dtypes: Counter = field(default_factory=Counter)
    class_pixels: np.ndarray | None = None
    ignore_pixels: int = 0

    def frequencies(self) -> np.ndarray:
        total = self.class_pixels.sum() if self.class_pixels is not None else 0
        return self.class_pixels / total if total else np.zeros_like(self.class_pixels, dtype=float)


class _FileScan(Dataset):
    """One item per sample: its header facts, and (when decoding) its class histogram, or the problem found."""

    def __init__(self, dataset: SegmentationFiles, decode: set[int]) -> None:
        self.dataset = dataset
        self.decode = decode

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset.samples[index]
        out: dict[str, Any] = {"index": index, "problem": None, "size": None, "dtype": None, "hist": None}
        try:
            if index in self.decode:  # decoding checks sizes too: no separate header read
                image, mask = self.dataset.load(index)
                out["size"] = image.shape[:2]
                out["dtype"] = str(image.dtype)
                ignore_index = self.dataset.encoding.ignore_index
                ignored = mask == ignore_index if ignore_index is not None else np.zeros(mask.shape, dtype=bool)
                if mask.ndim == 3:  # multi-label: the pixels having each label
                    out["hist"] = (mask == 1).sum((1, 2)).tolist()
                else:
                    out["hist"] = np.bincount(mask[~ignored], minlength=self.dataset.num_classes).tolist()
                out["ignore"] = int(ignored.sum())
            else:
                out["size"] = check_headers(sample)
        except DataError as err:
            out["problem"] = (err.kind, str(err), err.path or str(sample.image))
        return out


def check_headers(sample: Sample) -> tuple[int, int]:
    """The image's (H, W) from its header, its mask files' headers read and their sizes checked against it."""
    size = read_size(sample.image)
    for path in sample.label_masks or (sample.mask,):
        check_sizes(Sample(sample.image, path, sample.name), size, read_size(path))
    return size


def header_problems(samples: list[Sample]) -> list[Problem]:
    """What the headers of `samples` say is wrong (their pixels not decoded): large images' check."""
    problems = []
    for sample in samples:
        try:
            check_headers(sample)
        except DataError as err:
            problems.append(Problem(err.path or str(sample.image), err.kind, str(err)))
    return problems


def scan_split(
    split: str,
    dataset: SegmentationFiles,
    full: bool,
    num_samples_decoded: int = 64,
    num_workers: int = 0,
) -> tuple[SplitReport, list[Problem]]:
    n = len(dataset.samples)
    decode = set(range(n)) if full else set(np.linspace(0, n - 1, min(n, num_samples_decoded)).astype(int).tolist())
    report = SplitReport(split, num_samples=n, class_pixels=np.zeros(dataset.num_classes, dtype=np.int64))
    problems: list[Problem] = []
    if n == 0:
        return report, problems
    loader = DataLoader(_FileScan(dataset, decode), batch_size=None, num_workers=num_workers, collate_fn=_as_is)
    for item in loader:
        if item["problem"] is not None:
            kind, message, path = item["problem"]
            problems.append(Problem(path, kind, message))
            continue
        report.sizes[item["size"]] += 1
        if item["hist"] is not None:
            report.decoded += 1
            report.dtypes[item["dtype"]] += 1
            report.class_pixels += np.asarray(item["hist"], dtype=np.int64)
            report.ignore_pixels += item["ignore"]
    return report, problems


def _as_is(item: Any) -> Any:
    return item


def class_warnings(report: SplitReport, class_names: list[str], ignore_index: int | None) -> list[Problem]:
    """Signs of a mask encoding that is wrong but still gives valid ids (e.g. 0/255 masks read as index, so the
    255 class is ignored): a split that is mostly ignore, and (after a full scan) classes that never appear."""
    problems = []
    if report.decoded == 0:
        return problems
    seen = f"{report.decoded} decoded mask(s) of the {report.split} split"
    total = report.class_pixels.sum() + report.ignore_pixels
    if total and report.ignore_pixels / total > 0.5:
        share = report.ignore_pixels / total
        present = int((report.class_pixels > 0).sum())
        # Mostly ignore with a single class left is an encoding mistake, not a dataset: nothing to learn.
        problems.append(
            Problem(
                report.split,
                "mostly ignored",
                f"{share:.0%} of the pixels in {seen} are ignore_index {ignore_index}"
                + (" and the rest is one class" if present <= 1 else "")
                + f". If a class is stored as {ignore_index}, map it with data.mask_encoding=values "
                f"(e.g. data.mask_values=[0,{ignore_index}]) or data.label_map.",
                fatal=present <= 1,
            )
        )
    absent = [name for name, pixels in zip(class_names, report.class_pixels) if pixels == 0]
    if absent and report.decoded == report.num_samples:
        problems.append(
            Problem(report.split, "class absent", f"no pixel of class(es) {absent} in {seen}.", fatal=False)
        )
    return problems


def suggest_class_weights(class_pixels: np.ndarray, method: str = "median") -> list[float]:
    """Class weights for the loss from pixel counts: `median` frequency balancing (SegNet) or `enet`'s
    1 / ln(1.02 + p). Absent classes get weight 0 (nothing to balance)."""
    freq = class_pixels / max(class_pixels.sum(), 1)
    present = freq > 0
    weights = np.zeros_like(freq, dtype=float)
    if method == "median":
        weights[present] = np.median(freq[present]) / freq[present]
    elif method == "enet":
        weights[present] = 1.0 / np.log(1.02 + freq[present])
    else:
        raise ValueError(f"Unknown class-weight method {method!r}: use median or enet.")
    return [round(float(w), 4) for w in weights]
