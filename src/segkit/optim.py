"""The schedules' old address, kept so that checkpoints written before the move to segkit.training.schedules still
load: their stored scheduler config names `segkit.optim.poly` or `segkit.optim.cosine`. New configs use
segkit.training.schedules."""

from segkit.training.schedules import cosine, poly

__all__ = ["cosine", "poly"]
