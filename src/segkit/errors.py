"""Refusals: what segkit will not run as given (a config value, a device setting, a data file, a checkpoint, a
resume), said as a message that names the problem and the fix. The commands print that message alone and exit 1;
a traceback in front of it would read like a crash of segkit. `HYDRA_FULL_ERROR=1` shows the traceback, as it
does for Hydra's own errors.

A leaf: imports nothing of segkit, so that every layer can raise a refusal.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

from hydra.errors import InstantiationException

F = TypeVar("F", bound=Callable[..., Any])


class Refusal(Exception):
    """segkit will not run this as given; the message names what and the fix. The base of every such error
    (`ConfigError`, `DeviceError`, `UntrustedTargetError`, `DataError`, `CheckpointError`, `ResumeError` ...),
    each also a `ValueError` or the like where it was one before."""


class MissingFile(Refusal, FileNotFoundError):
    """A file the command names (a checkpoint, a weights file) does not exist."""


def full_error() -> bool:
    """Whether the user asked for whole tracebacks (Hydra's own switch)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def refusals_as_messages(function: F) -> F:
    """`function`, printing a `Refusal` it raises as its message (to stderr, exit status 1) instead of a traceback:
    for each command's main function (below Hydra's decorator, so that Hydra's own error report, a traceback, never
    sees it) and the resolvers Hydra calls to name the run directory. With `HYDRA_FULL_ERROR=1` the refusal is
    raised as it is.

    Example:
        >>> from segkit.errors import Refusal, refusals_as_messages
        >>> @refusals_as_messages
        ... def command(batch_size: int) -> int:
        ...     if batch_size < 1:
        ...         raise Refusal(f"data.batch_size={batch_size} is below 1. Fix: data.batch_size=8.")
        ...     return batch_size
        >>> command(8)
        8
    """

    @functools.wraps(function)
    def refusing(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (Refusal, InstantiationException) as err:
            # A class a config names (a logger, a callback) refusing its arguments reaches here wrapped by Hydra.
            refusal = err.__cause__ if isinstance(err, InstantiationException) else err
            if not isinstance(refusal, Refusal) or full_error():
                raise
            # SystemExit is no Exception: it passes Hydra's and OmegaConf's error handling, and Python prints it.
            raise SystemExit(str(refusal)) from None

    return refusing  # type: ignore[return-value]
