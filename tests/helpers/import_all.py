"""Imports every module of the installed segkit package, and every entry script, in this interpreter.

`make check-install` runs it in a fresh virtual environment built from the package's own metadata (plus the
constraints file): a runtime import that pyproject.toml does not declare fails here, by name. Optional groups
(`export`, `sweeps`, `tensorboard`, `mlflow`) are imported only when `--extras` says they were installed.

    python tests/helpers/import_all.py [--extras export,sweeps,tensorboard,mlflow]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENTRY_SCRIPTS = (
    "train.py",
    "evaluate.py",
    "predict.py",
    "export.py",
    "check_data.py",
    "browse_data.py",
    "bench.py",
    "summarize_sweep.py",
    "dashboard.py",
)
# What each optional group makes importable (modules segkit imports lazily, or that configs name).
EXTRAS = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "sweeps": (
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher",
    ),
    "tensorboard": ("tensorboard",),
    "mlflow": ("mlflow", "mlflow.store.tracking.sqlalchemy_store"),  # logger=mlflow's local SQLite store
}


def segkit_modules() -> list[str]:
    import segkit

    names = ["segkit"]
    for info in pkgutil.walk_packages(segkit.__path__, prefix="segkit."):
        names.append(info.name)
    return sorted(names)


def import_script(path: Path) -> None:
    """The script's module body (imports, decorators), not its `__main__` block."""
    spec = importlib.util.spec_from_file_location(f"_entry_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="comma-separated optional groups that were installed")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    unknown = set(extras) - set(EXTRAS)
    if unknown:
        parser.error(f"unknown extras {sorted(unknown)}; known: {sorted(EXTRAS)}")
    failed = []
    modules = segkit_modules()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - every failure is listed, then the exit status says it
            failed.append((name, traceback.format_exc(limit=3)))
    for script in ENTRY_SCRIPTS:
        try:
            import_script(ROOT / script)
        except Exception:  # noqa: BLE001
            failed.append((script, traceback.format_exc(limit=3)))
    optional = [name for extra in extras for name in EXTRAS[extra]]
    for name in optional:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001
            failed.append((name, traceback.format_exc(limit=3)))
    for name, error in failed:
        print(f"FAILED to import {name}:\n{error}", file=sys.stderr)
    total = len(modules) + len(ENTRY_SCRIPTS) + len(optional)
    print(
        f"{total - len(failed)} of {total} imported ({len(modules)} segkit modules, {len(ENTRY_SCRIPTS)} entry "
        f"scripts, {len(optional)} modules of the extras {extras or 'none'})."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
