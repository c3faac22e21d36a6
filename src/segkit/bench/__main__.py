"""python -m segkit.bench [model=unet backbone=efficientnet_b0 batch_sizes=[8,16] precisions=[32-true,bf16-mixed]]
python -m segkit.bench target=data data=membrane data.root=... workers=[0,2,4]

Prints a table and writes bench.json to the run directory (see conf/bench.yaml)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from segkit import CONFIG_DIR
from segkit.bench.loading import bench_loading
from segkit.bench.model import bench_model
from segkit.atomic import write_json

# JSON key -> column heading.
COLUMNS = {
    "model": {"batch_size": "batch", "image_size": "H x W", "precision": "precision", "channels_last": "ch.last",
              "compile": "compile", "train_img_s": "train img/s", "bare_img_s": "bare loop img/s",
              "overhead_pct": "overhead %", "infer_img_s": "infer img/s", "train_peak_mb": "train peak MB",
              "infer_peak_mb": "infer peak MB"},
    "data": {"data": "datamodule", "workers": "workers", "batch_size": "batch", "img_s": "img/s",
             "ms_per_batch": "ms/batch"},
}


def render(rows: list[dict], columns: dict[str, str], title: str) -> Table:
    table = Table(title=title)
    for heading in columns.values():
        table.add_column(heading, justify="right")
    for row in rows:
        table.add_row(*(f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    return table


def run(cfg: DictConfig) -> list[dict]:
    if cfg.target not in COLUMNS:
        raise ValueError(f"target={cfg.target!r} is not one of {list(COLUMNS)}.")
    output_dir = Path(cfg.paths.output_dir)
    rows = bench_model(cfg, output_dir) if cfg.target == "model" else bench_loading(cfg)
    if cfg.target == "model":
        title = f"{cfg.model._target_.rsplit('.', 1)[-1]} / {cfg.backbone.name} on {rows[0]['device']}"
    else:
        title = f"data loading: {cfg.data._target_.rsplit('.', 1)[-1]}"
    Console(width=max(Console().width, 140)).print(render(rows, COLUMNS[cfg.target], title))
    write_json(output_dir / "bench.json", {"config": OmegaConf.to_container(cfg, resolve=True), "rows": rows})
    print(f"Results: {output_dir / 'bench.json'}")
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
