"""The data check (`python check_data.py`, see conf/check_data.yaml): every file of every split read (in
data.num_workers workers), counts, image sizes, class pixel frequencies and every problem with its file, written to
report.json and class_weights.yaml in the run directory. The verdict is the start-up guard's own
(`FileDataModule.find_problems` over the splits `run_splits` says training loads), so the command fails exactly
when `train.py` with the same data config and `test` setting would stop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from segkit.config.checks import validate
from segkit.data.datamodule import SPLITS, run_splits
from segkit.data.filedata import FileDataModule
from segkit.data.files import DataError
from segkit.data.scan import Problem, SplitReport, suggest_class_weights
from segkit.runs.atomic import write_json


def check_dataset(
    datamodule: FileDataModule, splits: list[str] | tuple[str, ...] = SPLITS, full: bool = True, *, test: bool
) -> tuple[dict[str, SplitReport], list[Problem]]:
    """Every split's report and every problem. Errors (`fatal`) are what would stop `train.py` with this `test`
    setting: problems of the splits it loads (train, val, and test when `test`), which are always checked."""
    try:
        datamodule.check_root()
    except DataError as err:
        return {}, [Problem(str(datamodule.root), "no data folder", str(err))]
    required = run_splits("fit", test)
    checked = [split for split in SPLITS if split in splits or split in required]
    return datamodule.find_problems(checked, required, full)


def summary(
    datamodule: FileDataModule, reports: dict[str, SplitReport], problems: list[Problem], method: str | None
) -> dict[str, Any]:
    names = datamodule.class_names
    out: dict[str, Any] = {
        "root": str(datamodule.root),
        "splits": {},
        "problems": [vars(p) for p in problems],
        "errors": sum(p.fatal for p in problems),
    }
    for split, report in reports.items():
        out["splits"][split] = {
            "samples": report.num_samples,
            "decoded": report.decoded,
            "sizes": {f"{h}x{w}": n for (h, w), n in report.sizes.most_common()},
            "dtypes": dict(report.dtypes),
            "class_pixels": dict(zip(names, map(int, report.class_pixels))),
            "ignore_pixels": report.ignore_pixels,
        }
    train = reports.get("train")
    if method and train is not None and train.class_pixels.sum() > 0:
        out["class_weights"] = {"method": method, "weights": suggest_class_weights(train.class_pixels, method)}
    return out


def print_report(datamodule: FileDataModule, reports: dict[str, SplitReport], problems: list[Problem], out: dict):
    console = Console(width=max(Console().width, 120))
    table = Table(title=f"Dataset {datamodule.root}")
    for column in ("split", "samples", "decoded", "image sizes (HxW: count)", "dtypes", "problems"):
        table.add_column(column)
    for split, report in reports.items():
        sizes = ", ".join(f"{h}x{w}: {n}" for (h, w), n in report.sizes.most_common(3))
        if len(report.sizes) > 3:
            sizes += f" (+{len(report.sizes) - 3} other sizes)"
        count = sum(p.split == split for p in problems)
        table.add_row(split, str(report.num_samples), str(report.decoded), sizes, ", ".join(report.dtypes), str(count))
    console.print(table)

    classes = Table(title="Class pixel frequencies (share of labelled pixels)")
    classes.add_column("id", justify="right")
    classes.add_column("class")
    for split in reports:
        classes.add_column(split, justify="right")
    weights = out.get("class_weights", {}).get("weights")
    if weights:
        classes.add_column(f"weight ({out['class_weights']['method']})", justify="right")
    freqs = {split: report.frequencies() for split, report in reports.items()}
    for i, name in enumerate(datamodule.class_names):
        row = [str(i), name] + [f"{freqs[s][i]:.2%}" if reports[s].decoded else "-" for s in reports]
        classes.add_row(*row, *([f"{weights[i]:.3f}"] if weights else []))
    ignored = []
    for report in reports.values():
        total = report.class_pixels.sum() + report.ignore_pixels
        ignored.append(f"{report.ignore_pixels / total:.2%}" if total else "-")
    classes.add_row("", f"(ignore_index {datamodule.ignore_index}, share of all pixels)", *ignored)
    console.print(classes)

    if problems:
        listed = Table(title=f"{len(problems)} problem(s)", show_lines=False)
        for column in ("", "split", "kind", "what"):
            listed.add_column(column, overflow="fold")
        for p in problems:
            listed.add_row("error" if p.fatal else "warning", p.split, p.kind, p.message)
        console.print(listed)
    else:
        console.print("No problems found.")
    if weights:
        console.print(
            f"Suggested class weights: loss=ce loss.class_weights={weights}\n"
            f"  (or, with the default ce_dice loss: loss.losses.ce.class_weights={weights})"
        )


def run_check(cfg: DictConfig) -> dict[str, Any]:
    datamodule = instantiate(validate(cfg, "check_data").data)
    if not isinstance(datamodule, FileDataModule):
        raise SystemExit(f"data={type(datamodule).__name__} is not a dataset on disk: nothing to check.")
    test = bool(cfg.get("test", True))
    reports, problems = check_dataset(datamodule, list(cfg.splits), full=cfg.full, test=test)
    out = summary(datamodule, reports, problems, cfg.get("class_weights"))
    out["test"] = test
    print_report(datamodule, reports, problems, out)
    loads = " + ".join(run_splits("fit", test))
    if out["errors"]:
        print(f"Verdict: train.py (test={str(test).lower()}, loading {loads}) would stop on {out['errors']} error(s).")
    else:
        print(f"Verdict: train.py (test={str(test).lower()}, loading {loads}) would accept this data.")
    output_dir = Path(cfg.paths.output_dir)
    write_json(output_dir / "report.json", out)
    if "class_weights" in out:
        weights = OmegaConf.create({"class_weights": out["class_weights"]["weights"]})
        OmegaConf.save(weights, output_dir / "class_weights.yaml")
    print(f"Report: {output_dir / 'report.json'}")
    return out
