"""Benchmark the composed model or its data loading, or run the first-GPU suite (`python bench.py`, see
conf/bench.yaml): the measurements are segkit.bench's."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from segkit.bench.gpu import run_suite
from segkit.bench.loading import bench_loading
from segkit.bench.model import bench_model
from segkit.bench.summary import COLUMNS, render, spread_warnings, summarize
from segkit.runs.atomic import write_json


def run(cfg: DictConfig) -> list[dict]:
    """Measures, prints the table and its warnings, writes bench.json; returns the rows (see `summarize`).
    target=gpu runs the first-GPU suite instead (segkit.bench.gpu; no rows without CUDA)."""
    if cfg.target == "gpu":
        report = run_suite(cfg)
        return report["rows"] if report else []
    if cfg.target not in COLUMNS:
        raise ValueError(f"target={cfg.target!r} is not one of {[*COLUMNS, 'gpu']}.")
    output_dir = Path(cfg.paths.output_dir)
    rows = summarize(bench_model(cfg, output_dir) if cfg.target == "model" else bench_loading(cfg), cfg.target)
    if cfg.target == "model":
        title = f"{cfg.model._target_.rsplit('.', 1)[-1]} / {cfg.backbone.name} on {rows[0]['device']}"
    else:
        title = f"data loading: {cfg.data._target_.rsplit('.', 1)[-1]}"
    title += f", {max(1, int(cfg.repeats))} repeat(s)"
    console = Console(width=max(Console().width, 160))
    console.print(render(rows, COLUMNS[cfg.target], title))
    warnings = spread_warnings(rows, cfg.target)
    for warning in warnings:
        console.print(f"[yellow]Warning:[/yellow] {warning}", highlight=False)
    write_json(
        output_dir / "bench.json",
        {"config": OmegaConf.to_container(cfg, resolve=True), "rows": rows, "warnings": warnings},
    )
    print(f"Results: {output_dir / 'bench.json'}")
    return rows
