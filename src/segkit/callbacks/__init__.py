"""The Lightning callbacks a config adds to training (conf/callbacks/), one a file, as Lightning keeps its own:
prediction samples each validation, the dashboard's confusion matrices and hyperparameters, the time budget of the
learning-rate schedule, the periodic mid-epoch `last.ckpt`. Configs name them here:
`_target_: segkit.callbacks.TimeBudget`.

The callbacks every run has whatever its config (exact resume, stop on a signal, the epoch line) are part of a run's
life, in segkit.runs; what evaluate.py and predict.py write (masks, a W&B table) is in segkit.reports.predictions.
"""

from segkit.callbacks.dashboard import DashboardSummaries
from segkit.callbacks.periodic_checkpoint import PeriodicCheckpoint
from segkit.callbacks.prediction_samples import PredictionSamples
from segkit.callbacks.time_budget import TimeBudget

__all__ = ["DashboardSummaries", "PeriodicCheckpoint", "PredictionSamples", "TimeBudget"]
