"""`make dashboard`: TensorBoard over every run, opening on the runs' scores and losses.

TensorBoard opens on the first of its tabs that has data, in the order of its plugin list: Time Series, whose
cards sort by name (`epoch`, `lr-AdamW`, then `test/...`, `train/...` and at last `val/mIoU`). Served with the
Custom Scalars tab first, it opens on the layout every run writes (segkit.callbacks.dashboard.SCALARS_LAYOUT):
scores, losses, learning rate. Every other tab is TensorBoard's own, in its own order.
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULTS = {"--logdir": "logs", "--port": "6006"}


def plugins_scores_first() -> list[Any]:
    """TensorBoard's default plugins, the Custom Scalars dashboard first (after the core, which has no tab)."""
    from tensorboard import default
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

    plugins = [plugin for plugin in default.get_plugins() if plugin is not CustomScalarsPlugin]
    return plugins[:1] + [CustomScalarsPlugin] + plugins[1:]


def tensorboard_argv(argv: Sequence[str]) -> list[str]:
    """The command line TensorBoard gets: `argv`, with `--logdir logs` and `--port 6006` unless it sets them."""
    given = {arg.split("=", 1)[0] for arg in argv}
    if "--logdir_spec" in given:
        given.add("--logdir")
    defaults = [part for flag, value in DEFAULTS.items() if flag not in given for part in (flag, value)]
    return ["tensorboard", *defaults, *argv]


def serve(argv: Sequence[str]) -> None:
    """Serves TensorBoard (until Ctrl-C) with the Custom Scalars tab first; `argv`: any TensorBoard flags."""
    from tensorboard import program

    board = program.TensorBoard(plugins=plugins_scores_first())
    board.configure(argv=tensorboard_argv(argv))
    board.main()
