"""Comparing the jobs of a sweep (`python summarize_sweep.py <sweep dir>`): each job's overrides
(`.hydra/overrides.yaml`) and `metrics.json` become `summary.md`, `summary.csv` and `summary.png` (a bar per job)
in the sweep directory; jobs without results are listed as unfinished. An Optuna search (`hparams_search=...`) has
the same job folders; its best trial, from the sweeper's `optimization_results.yaml`, is added under the table.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

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
                "overrides": dict(o.split("=", 1) for o in overrides if "=" in o),
                "metrics": metrics,
                "dir": str(job_dir),
            }
        )
    if not jobs:
        raise SystemExit(f"{sweep_dir}: no job folders (0/, 1/, ...). Pass a multirun directory.")
    return jobs


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
    write_outputs(sweep_dir, rows, metric)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_outputs(sweep_dir: Path, rows: list[dict[str, Any]], metric: str) -> None:
    keys = list(rows[0])
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row[k]) for k in keys) + " |" for row in rows]
    (sweep_dir / "summary.md").write_text(
        f"# {sweep_dir.name}: jobs by {metric}\n\n" + "\n".join(lines) + "\n" + optuna_best(sweep_dir)
    )
    bar_chart(rows, metric, [k for k in keys if k not in ("job", "status") and k != metric and "/" not in k]).save(
        sweep_dir / "summary.png"
    )


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
