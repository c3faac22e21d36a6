"""An evaluation report from one confusion matrix: the terminal tables and the files of an evaluation run.

Everything derives from the summed matrix (rows ground truth, columns prediction), so the figures are
dataset-level, leave ignore_index out, and give NaN (left out of the means) where a class is absent.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from segkit.reports.drawing import confusion_heatmap
from segkit.training.metrics import POSITIVE_SCORES, scores_from_confusion

PER_CLASS = ("IoU", "Dice", "Precision", "Recall")
LABEL_COUNTS = ("tn", "fp", "fn", "tp")  # a multi-label task's confusion_matrix.csv, per label


def build_report(confmat: torch.Tensor, class_names: Sequence[str], task: str = "multiclass") -> dict[str, Any]:
    """The summary (a binary task's first: its positive class's IoU, Dice, precision and recall), the per-class
    table and the counts: a (C, C) confusion matrix, or a multi-label task's (C, 2, 2)."""
    scores = scores_from_confusion(confmat)
    summary = {key: float(scores[key][1]) for key in POSITIVE_SCORES} if task == "binary" else {}
    summary["aAcc"] = float(scores["pixel_acc"])
    summary |= {key: float(scores[key]) for key in ("mIoU", "mDice", "mPrecision", "mRecall")}
    per_class = [
        {"class": name, **{key: float(scores[key][i]) for key in PER_CLASS}, "pixels": int(scores["pixels"][i])}
        for i, name in enumerate(class_names)
    ]
    return {"summary": summary, "per_class": per_class, "confusion_matrix": confmat.long().tolist()}


def print_report(report: dict[str, Any], title: str) -> str:
    """Prints the report's tables; returns them as plain text (for the log file)."""
    console = Console(width=max(Console().width, 100), record=True)
    console.print(title)
    summary = Table(title="Summary (%)")
    for key in report["summary"]:
        summary.add_column(key, justify="right")
    summary.add_row(*(_percent(v) for v in report["summary"].values()))
    console.print(summary)
    classes = Table(title="Per class (%)")
    classes.add_column("class")
    for key in (*PER_CLASS, "pixels"):
        classes.add_column(key, justify="right")
    for row in report["per_class"]:
        classes.add_row(row["class"], *(_percent(row[k]) for k in PER_CLASS), f"{row['pixels']:,}")
    console.print(classes)
    return console.export_text()


def _percent(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def write_report_files(report: dict[str, Any], output_dir: Path) -> None:
    """per_class.csv, confusion_matrix.csv (pixel counts; a multi-label task's: tn, fp, fn, tp per label) and
    confusion_matrix.png (rows normalised)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = [row["class"] for row in report["per_class"]]
    with open(output_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", *PER_CLASS, "pixels"])
        writer.writeheader()
        writer.writerows(report["per_class"])
    matrix = np.asarray(report["confusion_matrix"])
    with open(output_dir / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        if matrix.ndim == 3:  # per label: rows ground truth (without, with), columns prediction
            writer.writerow(["label", *LABEL_COUNTS])
            for name, counts in zip(names, matrix.reshape(len(names), 4).tolist()):
                writer.writerow([name, *counts])
        else:
            writer.writerow(["ground truth \\ prediction", *names])
            for name, row in zip(names, matrix.tolist()):
                writer.writerow([name, *row])
    confusion_heatmap(matrix, names).save(output_dir / "confusion_matrix.png")
