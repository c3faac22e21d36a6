"""What a config may make Hydra call. A checkpoint or a run directory's recorded config is data from a file;
`hydra.utils.instantiate` would call any `_target_` it names (`pathlib.Path.write_text`, `shutil.copyfile`,
`torch.save`, ...). Every config is checked here first, whole, before anything is called.

Allowed: classes of segkit's model, loss, data, logger, callback and checkpoint modules and of torch.nn,
torch.optim, albumentations and Lightning's loggers and callbacks, plus a few named callables (the schedule
factories of segkit.training.schedules, the Trainer). A user's own package is allowed only by the current command
(`trusted_modules=[mypkg]`), never by the file being loaded.

Each name is listed once, at its current address: the addresses an older segkit wrote into checkpoints and run
directories are mapped to these (segkit.moved) where those files are read, before they are checked here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from types import ModuleType
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from segkit.errors import Refusal
from segkit.moved import MOVED_TARGETS

# Only classes whose dotted path and defining module both lie under one of these.
TRUSTED_MODULES: tuple[str, ...] = (
    "segkit.models",
    "segkit.training.losses",
    "segkit.data",
    "segkit.runs.loggers",
    "segkit.runs.mlflow_logger",
    "segkit.callbacks",
    "segkit.reports.predictions",  # the callbacks of evaluate and predict
    "segkit.runs.checkpoint_io",
    "torch.nn",
    "torch.optim",  # torch.optim.lr_scheduler included
    "albumentations",
    "lightning.pytorch.loggers",
    "lightning.pytorch.callbacks",
)
# Callables allowed by exact name: functions (configs give them as `_partial_` factories) and classes defined
# outside the modules above.
TRUSTED_CALLABLES: frozenset[str] = frozenset(
    {
        "segkit.training.schedules.poly",
        "segkit.training.schedules.cosine",
        "lightning.pytorch.Trainer",
    }
)

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_HOW_TO_TRUST = (
    "Fix: if the config is yours and the target is a class of your own package, allow that package for this "
    "command: trusted_modules=[<your package>] on the command line (or in conf/train.yaml, evaluate.yaml, "
    "predict.yaml, export.yaml; a checkpoint or a run directory can never grant it). Otherwise do not use it."
)


class UntrustedTargetError(Refusal, ValueError):
    """A config names something segkit will not call."""


def trusted_prefixes(trusted: Sequence[str] | str | None) -> tuple[str, ...]:
    """`trusted_modules` of the current command, checked: dotted module names (a trailing dot is dropped)."""
    if not trusted:
        return ()
    if isinstance(trusted, str):
        trusted = [trusted]
    prefixes = []
    for entry in trusted:
        name = str(entry).strip().rstrip(".")
        if not _DOTTED.fullmatch(name):
            raise ValueError(
                f'trusted_modules entry "{entry}" is not a dotted module name. Fix: list package or module '
                "names, e.g. trusted_modules=[mypkg,otherpkg.models]."
            )
        prefixes.append(name)
    return tuple(prefixes)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _refuse(key: str, target: Any, source: str, why: str) -> UntrustedTargetError:
    return UntrustedTargetError(
        f'Refusing {key} = "{target}" from {source}: {why}. segkit only builds classes of its own models, '
        "losses, data, loggers and callbacks, of torch.nn, torch.optim, albumentations and Lightning, and the "
        f"schedules of segkit.training.schedules. {_HOW_TO_TRUST}"
    )


def _locate_module_attribute(target: str) -> Any:
    """The object `target` names, found as Hydra finds it (attribute first, then submodule import); None when
    the path goes on past something that is not a module (an attribute of a class or object), which is never
    touched."""
    parts = target.split(".")
    obj: Any = import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if not isinstance(obj, ModuleType):
            return None
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = import_module(".".join(parts[: i + 1]))
    return obj


def check_target(target: Any, *, key: str, source: str, trusted: Sequence[str] = ()) -> None:
    """Refuse one `_target_` value unless it is allowed; imports only modules under an allowed prefix."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise _refuse(key, target, source, "not a dotted name of a class")
    if target in TRUSTED_CALLABLES:
        return
    if target in MOVED_TARGETS:  # read from no stored file (those go through the table first): typed, or copied
        raise _refuse(key, target, source, f"it is the old address of {MOVED_TARGETS[target]}, which to name instead")
    user = trusted_prefixes(trusted)
    allowed = TRUSTED_MODULES + user
    if not _under(target, allowed):
        raise _refuse(key, target, source, "it is not in a trusted module")
    try:
        obj = _locate_module_attribute(target)
    except ImportError as err:
        missing = f" (no module {err.name})" if err.name else ""
        raise _refuse(key, target, source, f"it names nothing that can be imported{missing}") from None
    if obj is None:
        raise _refuse(key, target, source, "it reaches an attribute of a class or object, not a class of a module")
    if isinstance(obj, ModuleType):
        raise _refuse(key, target, source, "it is a module, not a class")
    defined_in = getattr(obj, "__module__", None)
    if not isinstance(defined_in, str) or not _under(defined_in, allowed):
        raise _refuse(key, target, source, f'it is defined in "{defined_in}", an untrusted module')
    if isinstance(obj, type):
        return
    if callable(obj) and _under(target, user) and _under(defined_in, user):
        return  # the user's own package: its functions too
    raise _refuse(key, target, source, f"it is a {type(obj).__name__}, not a class")


def _walk(node: Any, key: str, source: str, visit: Callable[[str, Any], None]) -> None:
    """Calls visit(key path, value) for every `_target_` at any depth (lists and `_args_` included). OmegaConf
    containers are read as Hydra reads them: interpolations resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        if node._is_none() or node._is_missing():
            return
        names = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for name in names:
            path = f"{key}[{name}]" if isinstance(node, ListConfig) else (f"{key}.{name}" if key else str(name))
            try:
                value = node[name]
            except OmegaConfBaseException as err:  # unresolvable or ???: instantiate fails before any call
                if name == "_target_":
                    raise _refuse(
                        path, node._get_node(name)._value(), source, f"it cannot be resolved ({type(err).__name__})"
                    ) from None
                continue
            _visit_or_walk(name, value, path, source, visit)
    elif isinstance(node, Mapping):
        for name, value in node.items():
            _visit_or_walk(name, value, f"{key}.{name}" if key else str(name), source, visit)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _walk(value, f"{key}[{i}]", source, visit)


def _visit_or_walk(name: Any, value: Any, path: str, source: str, visit: Callable[[str, Any], None]) -> None:
    if name == "_target_":
        visit(path, value)
    else:
        _walk(value, path, source, visit)


def _interpolation(node: Any, key: str) -> tuple[str, str] | None:
    """The first string holding an OmegaConf interpolation, as (key path, string)."""
    if isinstance(node, str):
        return (key, node) if "${" in node else None
    if isinstance(node, Mapping):
        items = ((f"{key}.{name}" if key else str(name), value) for name, value in node.items())
    elif isinstance(node, (list, tuple)):
        items = ((f"{key}[{i}]", value) for i, value in enumerate(node))
    else:
        return None
    return next((found for path, value in items if (found := _interpolation(value, path))), None)


def check_targets(cfg: Any, *, source: str, trusted: Sequence[str] = (), key: str = "", resolved: bool = False) -> None:
    """Refuse, before anything is called, a config naming any `_target_` that is not allowed.

    `source` says where the config came from (a checkpoint path, a run directory file), for the message;
    `trusted` are the current command's `trusted_modules`; `key` names the config's place (e.g. "model").
    `resolved=True` is for configs stored resolved (a checkpoint's): any `${...}` in them is refused, since
    resolving it could build what no check has seen.
    """
    trusted = trusted_prefixes(trusted)
    if resolved or not isinstance(cfg, (DictConfig, ListConfig)):
        if isinstance(cfg, (DictConfig, ListConfig)):
            cfg = OmegaConf.to_container(cfg, resolve=False)
        found = _interpolation(cfg, key)
        if found and resolved:
            raise UntrustedTargetError(
                f'Refusing {found[0]} = "{found[1]}" from {source}: a stored config holds no interpolations '
                "(segkit saves its configs resolved), and resolving one could build objects no check has seen. "
                "Fix: do not use this file; take the checkpoint from the run that wrote it, or train again."
            )
        if found:  # Hydra makes an OmegaConf config of it and resolves it: check what Hydra will see
            cfg = OmegaConf.create(cfg, flags={"allow_objects": True})

    def visit(path: str, target: Any) -> None:
        check_target(target, key=path, source=source, trusted=trusted)

    _walk(cfg, key, source, visit)


def safe_instantiate(
    cfg: Any, *args: Any, source: str, trusted: Sequence[str] = (), key: str = "", **kwargs: Any
) -> Any:
    """`hydra.utils.instantiate` after `check_targets` of the config and of any config in `args` or `kwargs`."""
    check_targets(cfg, source=source, trusted=trusted, key=key)
    check_targets(kwargs, source=source, trusted=trusted, key=key)  # Hydra merges them into the config
    check_targets(list(args), source=source, trusted=trusted, key=f"{key}._args_")
    try:
        return instantiate(cfg, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, Refusal):  # the class refused its arguments: its message, not Hydra's wrapping
            raise err.__cause__ from err
        raise
