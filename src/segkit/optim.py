"""The schedules' old address, kept so that checkpoints written before the move to segkit.schedules still load:
their stored scheduler config names `segkit.optim.poly` or `segkit.optim.cosine`. New configs use segkit.schedules."""

from segkit.schedules import cosine, poly

__all__ = ["cosine", "poly"]
