"""Lightning's CSV logger, made safe to resume: a resumed run keeps its metrics history, and no rewrite of
`metrics.csv` or `hparams.yaml` can be cut short by a kill. And its W&B logger, without the settings W&B warns
about."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import yaml
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from segkit.runs.atomic import atomic_open, atomic_write_text


def read_rows(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and complete rows of a metrics.csv; a last line that a kill cut short is left out."""
    with open(path, newline="") as file:
        text = file.read()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def write_rows(path: str, fields: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class AppendingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv (Lightning's writer deletes it); rewrites (a new column) and
    hparams.yaml are atomic."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            self.metrics_keys = read_rows(self.metrics_file_path)[0]

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        write_rows(self.metrics_file_path, fieldnames, read_rows(self.metrics_file_path)[1])

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        text = yaml.safe_dump(_plain(self.hparams), sort_keys=False)
        atomic_write_text(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), text)


def _plain(value: Any) -> Any:
    """YAML-safe: containers kept, numbers and strings as they are, anything else as its text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger (`csv/metrics.csv`, on disk as soon as a metric is logged), made safe to resume: a
    resumed run appends to its metrics history instead of starting it again (`forget_from` drops what the
    interrupted process logged after its checkpoint), and no rewrite can be cut short by a kill. Always on
    (`conf/logger/*.yaml`).

    Args: those of `lightning.pytorch.loggers.CSVLogger` (`save_dir`, `name`, `version`, ...).

    Example:
        >>> from segkit.runs.loggers import CSVLogger
        >>> logger = CSVLogger(save_dir="run", name="csv", version="")  # doctest: +SKIP
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def forget_from(self, step: int, epoch_end: bool = False) -> None:
        """Drop the rows logged at `step` or later: a run resumed from that step logs them again. `epoch_end`: the
        run resumes into the validation and end of the epoch whose last batch was `step` (segkit.runs.epoch_end_resume),
        which are logged at the step before; their rows go too, that batch's own (training-step values, learning
        rates: Lightning logs them after the checkpoint, and the resumed run does not) stay."""
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return
        fields, rows = read_rows(path)

        def kept(row: dict[str, str]) -> bool:
            at = int(row["step"]) if row.get("step", "").isdigit() else step
            logged_again = epoch_end and at == step - 1 and _epoch_level(row)
            return at < step and not logged_again

        write_rows(path, fields, [r for r in rows if kept(r)])


def _epoch_level(row: dict[str, str]) -> bool:
    """A row of epoch-level values (validation, epoch end): any value but the step's own (`*_step`, `lr-*`)."""
    return any(
        value not in ("", None)
        and key not in ("epoch", "step")
        and not key.endswith("_step")
        and not key.startswith("lr-")
        for key, value in row.items()
    )


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger without the two settings it passes to every `wandb.init` that W&B (0.30) warns about
    on every run: `anonymous` (no effect any more) and, offline, `resume` (ignored offline: the run keeps its id,
    which resuming sets, either way). `logger=wandb` (and the default) in a config.

    Args: those of `lightning.pytorch.loggers.WandbLogger` (`project`, `name`, `group`, `tags`, `save_dir`, ...).

    Example:
        >>> from segkit.runs.loggers import WandbLogger
        >>> logger = WandbLogger(project="segkit", save_dir="run", offline=True)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
        if os.environ.get("WANDB_MODE", self._wandb_init.get("mode")) in ("offline", "dryrun"):
            self._wandb_init.pop("resume", None)
