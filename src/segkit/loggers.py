"""Lightning's CSV logger, made safe to resume: a resumed run keeps its metrics history."""

from __future__ import annotations

import csv
import os

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class AppendingWriter(ExperimentWriter):
    """Appends to an existing metrics.csv (Lightning's writer deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def forget_from(self, step: int) -> None:
        """Drop the rows logged at `step` or later: a run resumed from that step logs them again."""
        path = self.experiment.metrics_file_path
        if not os.path.isfile(path):
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            fields, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) < step]
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
