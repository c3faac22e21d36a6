"""Lightning's MLflow logger, offline and without an account: a local SQLite store by default (MLflow 3 refuses
its old file store), no usage telemetry, and the resolved config as dotted params (`optimizer.lr`, as the command
line names them) within MLflow's limits. `logger=mlflow` (conf/logger/mlflow.yaml); `make mlflow` serves the UI.

mlflow (or mlflow-skinny, the optional group `mlflow`) is imported only when a logger is made: a core install
imports this module without it."""

from __future__ import annotations

import json
import logging
import os
import re
from argparse import Namespace
from pathlib import Path
from typing import Any, Mapping

from lightning.fabric.utilities.logger import _convert_params
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger
from lightning.pytorch.utilities import rank_zero_only

from segkit.errors import Refusal

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
# MLflow's limits (mlflow.utils.validation, 3.x): a param's value, a key, params in one batch.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
PARAMS_PER_BATCH = 100
# A param or metric name may hold letters, digits and `_ - . / : ` (space); anything else becomes `_`.
_NOT_IN_KEY = re.compile(r"[^\w\-./: ]")


class MLflowMissing(Refusal, ModuleNotFoundError):
    """logger=mlflow without mlflow installed."""


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a local SQLite store (`sqlite:////abs/mlflow.db`, `sqlite:///rel.db`); None for any
    other store (a tracking server, a database server)."""
    if not tracking_uri or not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri[len(SQLITE_PREFIX) :])


def param_value(value: Any) -> str:
    """As a config file writes it: strings as they are, anything else as JSON (`null`, `true`, `[64, 64]`)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dictionaries flattened to dotted keys (`model.backbone.name`), lists kept whole as one value; keys
    made valid for MLflow, values cut to its limit (with a warning naming them)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flat_params(value, f"{name}."))
            continue
        text = param_value(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            log.warning("MLflow: param %s cut to %d characters (of %d).", name, MAX_PARAM_VALUE_LENGTH, len(text))
            text = text[:MAX_PARAM_VALUE_LENGTH]
        flat[_NOT_IN_KEY.sub("_", name)[:MAX_KEY_LENGTH]] = text
    return flat


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLflow logger, offline by default:
    - a `sqlite:///<file>` tracking URI gets its folder made, and its experiment's artifacts beside the database
      (`<folder>/artifacts`) unless `artifact_location` says otherwise; any other URI (a tracking server) is used
      as given;
    - MLflow's usage telemetry is off (`MLFLOW_DISABLE_TELEMETRY=true` unless already set): a run never reaches
      out to a server it was not told to use;
    - params are the config flattened with dots (`optimizer.lr`), not Lightning's slashes, each value whole up to
      MLflow's 6000 characters (Lightning's cut is 250), in batches of 100; a param logged again with another
      value (MLflow keeps a run's params fixed) is left as first logged, with a warning.

    Args: those of `lightning.pytorch.loggers.MLFlowLogger` (`experiment_name`, `run_name`, `tracking_uri`,
    `tags`, `artifact_location`, `log_model`, ...).

    Example:
        >>> from segkit.runs.mlflow_logger import MLFlowLogger
        >>> logger = MLFlowLogger(tracking_uri="sqlite:///logs/mlflow/mlflow.db")  # doctest: +SKIP
    """

    def __init__(
        self,
        *args: Any,
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        continue_run_of: str | None = None,
        **kw: Any,
    ):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is first imported
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise MLflowMissing(
                "logger=mlflow needs MLflow's client, which is not installed. Fix: make setup, or "
                "pip install -c constraints.txt -e '.[mlflow]'; or choose another logger (logger=default)."
            ) from None
        database = sqlite_path(tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            if artifact_location is None:
                artifact_location = (database.parent / "artifacts").resolve().as_uri()
        super().__init__(*args, tracking_uri=tracking_uri, artifact_location=artifact_location, **kw)
        self._params: dict[str, str] = {}
        if continue_run_of is not None and self._run_id is None:
            self._continue(continue_run_of)

    def _continue(self, output_dir: str) -> None:
        """Logs into the MLflow run of the run directory `output_dir` (a run resumed in place, `ckpt_path=last`):
        its newest run whose `output_dir` param is that directory, set running again; its params stay as they were.
        None found (the interrupted run logged elsewhere): a new MLflow run."""
        experiment = self._mlflow_client.get_experiment_by_name(self._experiment_name)
        if experiment is None or "'" in output_dir:  # (a quote would end the filter's string)
            return
        found = self._mlflow_client.search_runs(
            [experiment.experiment_id],
            filter_string=f"params.output_dir = '{output_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if found:
            self._run_id = found[0].info.run_id
            self._params = dict(found[0].data.params)
            self._mlflow_client.update_run(self._run_id, status="RUNNING")
            log.info("MLflow: continuing run %s of %s.", self._run_id, output_dir)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        from mlflow.entities import Param

        new: dict[str, str] = {}
        for key, value in flat_params(_convert_params(params)).items():
            if key not in self._params:
                new[key] = value
            elif self._params[key] != value:
                log.warning(
                    "MLflow: param %s stays %r (a run's params are fixed), not %r.", key, self._params[key], value
                )
        items = [Param(key, value) for key, value in new.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            batch = items[start : start + PARAMS_PER_BATCH]
            self.experiment.log_batch(run_id=self.run_id, params=batch, **self._log_batch_kwargs)
        self._params |= new
