"""The figures of a benchmark, summarised and shown (`python bench.py`, see conf/bench.yaml; the command itself is
segkit.tasks.bench).

Every figure is measured `repeats` times and reported as its median with the min-max over the repeats: on a shared
machine one run of a few steps can be off by tens of percent, and a single number hides that. When the spread is
larger than the effect a row is meant to show (Lightning's overhead over the bare loop; the gain of more loader
workers), a warning says so, and the figure should not be trusted.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from rich.table import Table

from segkit.bench.loading import FIGURES as DATA_FIGURES
from segkit.bench.model import FIGURES as MODEL_FIGURES

# JSON key -> column heading. Figures measured once per repeat are reported as median (min-max).
COLUMNS = {
    "model": {
        "batch_size": "batch",
        "image_size": "H x W",
        "precision": "precision",
        "channels_last": "ch.last",
        "compile": "compile",
        "train_img_s": "train img/s",
        "bare_img_s": "bare loop img/s",
        "overhead_pct": "overhead %",
        "infer_img_s": "infer img/s",
        "train_peak_mb": "train peak MB",
        "infer_peak_mb": "infer peak MB",
    },
    "data": {
        "data": "datamodule",
        "workers": "workers",
        "batch_size": "batch",
        "img_s": "img/s",
        "ms_per_batch": "ms/batch",
    },
}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of one figure's repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


FIGURES = {"model": MODEL_FIGURES, "data": DATA_FIGURES}


def summarize(rows: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    """Each figure's list of repeats `key: [...]` becomes `key` (the median), `key_min`, `key_max` and
    `key_repeats`; the setting's own keys stay as they are."""
    out = []
    for row in rows:
        flat: dict[str, Any] = {}
        for key, value in row.items():
            if key in FIGURES[target]:
                s = spread(value)
                flat |= {key: s["median"], f"{key}_min": s["min"], f"{key}_max": s["max"], f"{key}_repeats": value}
            else:
                flat[key] = value
        out.append(flat)
    return out


def _setting(row: dict[str, Any], target: str) -> str:
    if target == "data":
        return f"workers={row['workers']}"
    h, w = row["image_size"]
    return f"batch {row['batch_size']}, {h}x{w}, {row['precision']}, channels_last={row['channels_last']}"


def spread_warnings(rows: list[dict[str, Any]], target: str) -> list[str]:
    """Where the spread over the repeats is at least the effect measured (rows as `summarize` gives them).

    model: the overhead of Lightning over the bare loop, |median|, against the min-max range of the per-repeat
    overheads. data: each worker count's gain over the first, |difference of the medians|, against the wider of
    the two img/s ranges. One repeat shows no spread at all, which is warned about too."""
    if not rows:
        return []
    if len(rows[0].get(f"{'overhead_pct' if target == 'model' else 'img_s'}_repeats", [])) < 2:
        return [
            "One repeat per figure: its spread is unknown, and so is whether the differences in the table are "
            "more than noise. Measure with repeats=3 or more."
        ]
    found = []
    if target == "model":
        for row in rows:
            effect = abs(row["overhead_pct"])
            width = row["overhead_pct_max"] - row["overhead_pct_min"]
            if width >= effect:
                found.append(
                    f"{_setting(row, target)}: the overhead over the bare loop ({row['overhead_pct']:+.1f}%) is within "
                    f"the spread of its repeats ({row['overhead_pct_min']:+.1f}% to {row['overhead_pct_max']:+.1f}%): "
                    "not measured. More repeats or steps, or a quieter machine, can resolve it."
                )
    else:
        first = rows[0]
        for row in rows[1:]:
            effect = abs(row["img_s"] - first["img_s"])
            width = max(r["img_s_max"] - r["img_s_min"] for r in (first, row))
            if width >= effect:
                found.append(
                    f"{_setting(row, target)}: the difference from {_setting(first, target)} ({effect:.1f} img/s) is "
                    f"within the spread of the repeats ({width:.1f} img/s): not measured. More repeats or steps can "
                    "resolve it."
                )
    return found


def _cell(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if f"{key}_min" in row:
        return f"{value:.1f} ({row[f'{key}_min']:.1f}-{row[f'{key}_max']:.1f})"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def render(rows: list[dict], columns: dict[str, str], title: str) -> Table:
    table = Table(title=title, caption="median over the repeats (min-max)")
    for heading in columns.values():
        table.add_column(heading, justify="right")
    for row in rows:
        table.add_row(*(_cell(row, c) for c in columns))
    return table
