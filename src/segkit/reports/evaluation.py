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
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from segkit.metrics import scores_from_confusion

PER_CLASS = ("IoU", "Dice", "Precision", "Recall")


def build_report(confmat: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    scores = scores_from_confusion(confmat)
    summary = {"aAcc": float(scores["pixel_acc"])}
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
    """per_class.csv, confusion_matrix.csv (pixel counts) and confusion_matrix.png (rows normalised)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    names = [row["class"] for row in report["per_class"]]
    with open(output_dir / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", *PER_CLASS, "pixels"])
        writer.writeheader()
        writer.writerows(report["per_class"])
    with open(output_dir / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ground truth \\ prediction", *names])
        for name, row in zip(names, report["confusion_matrix"]):
            writer.writerow([name, *row])
    confusion_heatmap(np.asarray(report["confusion_matrix"]), names).save(output_dir / "confusion_matrix.png")


def confusion_heatmap(confmat: np.ndarray, names: Sequence[str], cell: int = 0) -> Image.Image:
    """Each row (a ground-truth class) normalised to sum to 1, white (0) to dark blue (1), values written in
    the cells while they fit."""
    n = len(names)
    cell = cell or max(12, min(48, 720 // max(n, 1)))
    rows = confmat.sum(axis=1, keepdims=True)
    norm = np.divide(confmat, rows, out=np.zeros_like(confmat, dtype=float), where=rows > 0)
    label_w = 8 + 7 * max(len(str(name)) for name in names)
    top = 24
    title = "rows: ground truth, columns: prediction (each row sums to 1)"
    image = Image.new("RGB", (max(label_w + n * cell + 10, 12 + 6 * len(title)), top + n * cell + label_w), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill="black")
    for i in range(n):
        for j in range(n):
            v = float(norm[i, j])
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            x, y = label_w + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(220, 220, 220))
            if cell >= 30:
                draw.text((x + 3, y + cell // 2 - 5), f"{v:.2f}", fill="white" if v > 0.5 else "black")
        draw.text((4, top + i * cell + cell // 2 - 5), str(names[i]), fill="black")
    column_labels = Image.new("RGB", (label_w, n * cell), "white")
    label_draw = ImageDraw.Draw(column_labels)
    for j, name in enumerate(names):
        label_draw.text((4, j * cell + cell // 2 - 5), str(name), fill="black")
    image.paste(column_labels.rotate(90, expand=True), (label_w, top + n * cell + 2))
    return image
