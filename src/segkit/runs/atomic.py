"""Files that are never half-written: a reader sees the old content or the new, never a mix.

Everything a run writes and may later replace (checkpoints, config.yaml, metrics.json, metrics.csv after a resume,
hparams.yaml) goes through here: write a temporary file beside the target, flush it to disk, rename it over the
target. A temporary file is named `.<target name>.tmp-<pid>`, so a leftover one says which process left it.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

TMP_MARK = ".tmp-"


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open` for writing that replaces `path` only when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode, **kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as file:
        file.write(text)


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed processes left in `folder`; returns what was removed. Call it
    only where no other process is writing (a run's start, before training)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.glob(f".*{TMP_MARK}*") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def write_json(path: str | Path, payload: dict) -> None:
    """A JSON result, written atomically; NaN becomes null (JSON has no NaN)."""

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    atomic_write_text(path, json.dumps(clean(payload), indent=2, sort_keys=True) + "\n")
