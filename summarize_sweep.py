"""Compare the jobs of a sweep:

    python summarize_sweep.py logs/train/multiruns/<stamp> [--metric val/mIoU_best] [--columns val/mDice,time/fit_s]

Reads each job's overrides (`.hydra/overrides.yaml`) and `metrics.json`, and writes `summary.md`, `summary.csv`
and `summary.png` (a bar per job) into the sweep directory; jobs without results are listed as unfinished.
An Optuna search (`hparams_search=...`) has the same job folders; its best trial, from the sweeper's
`optimization_results.yaml`, is added under the table.
"""

import argparse
from pathlib import Path

from segkit.reports.sweeps import summarize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="val/mIoU_best")
    parser.add_argument("--columns", default="val/mIoU,val/mDice,val/pixel_acc,time/fit_s")
    args = parser.parse_args(argv)
    rows = summarize(args.sweep_dir, args.metric, [c for c in args.columns.split(",") if c])
    print((args.sweep_dir / "summary.md").read_text())
    print(f"Written: {args.sweep_dir / 'summary.csv'}, {args.sweep_dir / 'summary.png'} ({len(rows)} jobs)")


if __name__ == "__main__":
    main()
