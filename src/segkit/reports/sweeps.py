"""Comparing the jobs of a sweep (`python summarize_sweep.py <sweep dir>`): each job's overrides
(`.hydra/overrides.yaml`) and `metrics.json` become `summary.md`, `summary.csv` and `summary.png` (a bar per job)
in the sweep directory; jobs without results are listed as unfinished. An Optuna search (`hparams_search=...`) has
the same job folders; its best trial, from the sweeper's `optimization_results.yaml`, is added under the table.

A k-fold sweep (`python train.py -m data.fold=0,1,2,3,4`): the jobs that differ only by `data.fold` form one group
(several when the sweep varies other keys too), and each metric's mean and standard deviation over the group's
finished folds are added: a table in `summary.md`, and `mean` and `std` rows in `summary.csv` after the per-fold rows.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import OmegaConf

from segkit.reports.drawing import bar_chart


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    jobs = []
    job_dirs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job_dir in job_dirs:
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else None
        jobs.append(
            {
                "job": int(job_dir.name),
                "overrides": dict(_key_value(o) for o in overrides if "=" in o),
                "metrics": metrics,
                "dir": str(job_dir),
            }
        )
    if not jobs:
        raise SystemExit(f"{sweep_dir}: no job folders (0/, 1/, ...). Pass a multirun directory.")
    return jobs


def _key_value(override: str) -> tuple[str, str]:
    """`+data.fold=2` -> ("data.fold", "2"): an added key and a changed one are the same column."""
    key, value = override.split("=", 1)
    return key.lstrip("+~"), value


FOLD_KEY = "data.fold"


def fold_groups(rows: Sequence[dict[str, Any]], swept: Sequence[str], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per group of jobs that differ only by data.fold: the other swept values, the folds, and each metric's mean
    and sample standard deviation (ddof 1; NaN for a single fold) over the finished folds (`n`). [] when
    data.fold is not swept."""
    if FOLD_KEY not in swept:
        return []
    others = [k for k in swept if k != FOLD_KEY]
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["job"]):
        groups.setdefault(tuple(str(row[k]) for k in others), []).append(row)
    summaries = []
    for values, members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        summary: dict[str, Any] = dict(zip(others, values))
        summary["folds"] = ",".join(str(r[FOLD_KEY]) for r in done)
        summary["n"] = len(done)
        summary["of"] = len(members)
        for name in names:
            found = np.array([r[name] for r in done if not math.isnan(r[name])], dtype=float)
            summary[name] = (
                float(found.mean()) if len(found) else float("nan"),
                float(found.std(ddof=1)) if len(found) > 1 else float("nan"),
            )
        summaries.append(summary)
    return summaries


def summarize(sweep_dir: Path, metric: str, columns: list[str]) -> list[dict[str, Any]]:
    jobs = read_jobs(sweep_dir)
    swept = sorted({k for job in jobs for k in job["overrides"] if len({j["overrides"].get(k) for j in jobs}) > 1})
    rows = []
    for job in jobs:
        m = job["metrics"] or {}
        row = {"job": job["job"], **{k: job["overrides"].get(k, "") for k in swept}}
        row |= {name: m.get(name, float("nan")) for name in [metric, *columns]}
        row["status"] = "done" if job["metrics"] is not None else "unfinished"
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r[metric]), -r[metric] if not math.isnan(r[metric]) else 0))
    write_outputs(sweep_dir, rows, metric, fold_groups(rows, swept, [metric, *columns]))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_outputs(
    sweep_dir: Path, rows: list[dict[str, Any]], metric: str, folds: Sequence[dict[str, Any]] = ()
) -> None:
    keys = list(rows[0])
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys + (["n"] if folds else []))
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
        writer.writerows(_fold_csv_rows(folds, keys))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text(
        f"# {sweep_dir.name}: jobs by {metric}\n\n"
        + "\n".join(lines)
        + "\n"
        + _fold_markdown(folds, keys)
        + optuna_best(sweep_dir)
    )
    bar_chart(rows, metric, [k for k in keys if k not in ("job", "status") and k != metric and "/" not in k]).save(
        sweep_dir / "summary.png"
    )


def _mean_std(pair: tuple[float, float]) -> str:
    mean, std = pair
    if math.isnan(mean):
        return ""
    return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def _fold_markdown(folds: Sequence[dict[str, Any]], keys: list[str]) -> str:
    """The over-folds table: a row per group, each metric as mean ± sample std over its n finished folds."""
    if not folds:
        return ""
    names = [k for k in keys if k in folds[0] and isinstance(folds[0][k], tuple)]
    others = [k for k in folds[0] if k not in names and k not in ("folds", "n", "of")]
    head = [*others, "folds", "n", *names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in folds:
        cells = [*(str(group[k]) for k in others), group["folds"], f"{group['n']} of {group['of']}"]
        lines.append("| " + " | ".join(cells + [_mean_std(group[k]) for k in names]) + " |")
    return (
        "\n## Over folds: mean ± standard deviation\n\nJobs that differ only by data.fold form a group; "
        "the sample standard deviation (n - 1) over its finished folds.\n\n" + "\n".join(lines) + "\n"
    )


def _fold_csv_rows(folds: Sequence[dict[str, Any]], keys: list[str]) -> list[dict[str, str]]:
    """A `mean` and a `std` row per group, after the per-fold rows: data.fold lists the group's finished folds."""
    rows = []
    for group in folds:
        for which, index in (("mean", 0), ("std", 1)):
            row = {k: "" for k in keys}
            row |= {k: str(v) for k, v in group.items() if k in keys and not isinstance(v, tuple)}
            row |= {k: _fmt(v[index]) for k, v in group.items() if isinstance(v, tuple)}
            row |= {
                "job": which,
                FOLD_KEY: group["folds"],
                "status": f"{group['n']} of {group['of']} folds",
                "n": group["n"],
            }
            rows.append(row)
    return rows


def optuna_best(sweep_dir: Path) -> str:
    """The Optuna sweeper's verdict (its own optimized_metric and direction), as markdown; "" for other sweeps."""
    results_file = sweep_dir / "optimization_results.yaml"
    if not results_file.is_file():
        return ""
    results = OmegaConf.to_container(OmegaConf.load(results_file))
    if "best_value" not in results:  # a multi-objective study: a Pareto front instead of one best trial
        return f"\nOptuna: {len(results.get('solutions', []))} Pareto-optimal trials, see {results_file.name}.\n"
    params = ", ".join(f"{k}={v}" for k, v in results["best_params"].items())
    return f"\nOptuna best value: {_fmt(float(results['best_value']))} with {params}\n"
