"""Config mistakes caught at start-up, naming the key: before data is scanned, a model built or a worker started.

Two checks, both cheap:
- `check_overrides(config_name)`: entry scripts call it before Hydra composes. A command-line key that the composed
  config does not have (`trainer.max_epoch=1`) fails in about a second with the closest existing keys, instead of
  Hydra's hint to add it with `+`. Group choices, `+`/`++`/`~` overrides, `hydra...` and sweeps pass through to Hydra.
- `validate(cfg, task)`: the types and ranges of the values people type most (batch sizes, sizes, learning rate,
  epochs, class facts, precision, devices). Strings that spell a number ("8", as `${oc.env:...}` gives) are
  converted in the config; anything else is a `ConfigError` naming the key, the value, what is allowed and the fix.

Only torch-free modules are imported here: `check_overrides` runs before the heavy imports of a task.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, ListConfig

from segkit.config.hydra_setup import CONFIG_DIR, register_resolvers
from segkit.errors import Refusal

ABSENT = object()  # a key the config does not have (or cannot resolve): not this module's to judge
# data.sampling's values, as segkit.data.datamodule.SAMPLINGS (not imported: torch loads after these checks).
SAMPLINGS = ("uniform", "class_balanced")
# inference.blend's and predict's probability_format's values, as segkit.training.windows.BLENDS and
# segkit.reports.predictions.PROBABILITY_FORMATS (not imported, for the same reason).
BLENDS = ("mean", "gaussian", "linear")
PROBABILITY_FORMATS = ("float16", "uint8")
SIZE_KEYS = ("image_size", "crop_size")  # image_size first: synthetic's crop_size interpolates it


class ConfigError(Refusal, ValueError):
    """A config value that would fail later, or worse, run: raised before any heavy work, naming the key."""


# ----------------------------------------------------------------------------------------------- misspelled keys


def check_overrides(config_name: str, argv: Sequence[str] | None = None, config_dir: str = CONFIG_DIR) -> None:
    """For entry scripts, before Hydra composes: exits with status 1 and the message when a command-line key
    does not exist (`argv` defaults to the command's own arguments)."""
    try:
        find_unknown_keys(config_name, sys.argv[1:] if argv is None else argv, config_dir)
    except ConfigError as err:
        sys.exit(str(err))


def find_unknown_keys(config_name: str, argv: Sequence[str], config_dir: str = CONFIG_DIR) -> None:
    """Raises `ConfigError` for every `key=value` of `argv` whose key the composed config lacks. Whatever this
    cannot judge (syntax errors, unknown group options, extra config dirs, help flags) is left to Hydra."""
    from hydra._internal.utils import get_args_parser

    if {"--version", "--experimental-rerun"} & set(argv):
        return
    try:
        args, _ = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # a malformed flag: Hydra's parser says so itself
        return
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path or args.config_dir:
        return
    overrides = _parse(args.overrides or [])
    if overrides is None:
        return
    plain, structural = [], []
    for override in overrides:
        key = override.key_or_group
        if re.split(r"[./]", key)[0] == "hydra":
            if key.startswith("hydra.searchpath"):
                return  # other config dirs: their keys are not known here
            continue
        if override.package is not None or override.type != OverrideType.CHANGE or _is_group(key, config_dir):
            line = _one_value(override)
            if line is None:
                return  # a sweep over what shapes the config that cannot be listed here (interval, glob)
            structural.append(line)
        else:
            plain.append(override)
    if not plain:
        return
    cfg = _compose(args.config_name or config_name, structural, config_dir)
    if cfg is None:
        return
    messages = [message for override in plain if (message := _unknown_key(cfg, override)) is not None]
    if messages:
        raise ConfigError("\n".join(messages))


def _parse(lines: list[str]) -> list[Any] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(lines)
    except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
        return None


def _is_group(key: str, config_dir: str) -> bool:
    """`model=fcn` picks an option of a config group; `model.upsample=...` sets a key."""
    return "." not in key and ("/" in key or (Path(config_dir) / key).is_dir())


def _one_value(override: Any) -> str | None:
    """The override with one value of its sweep (the first: the first job's), or None when it has no list."""
    if not override.is_sweep_override():
        return override.input_line
    try:
        first = next(iter(override.sweep_string_iterator()))
    except Exception:  # noqa: BLE001 - interval(...) and glob(...) have no list of values
        return None
    return f"{override.get_key_element()}={first}"


def _compose(config_name: str, overrides: list[str], config_dir: str) -> DictConfig | None:
    from hydra import compose, initialize_config_dir

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3", job_name=config_name):
            return compose(config_name=config_name, overrides=overrides)
    except Exception:  # noqa: BLE001 - a wrong group option and the like: Hydra's own message says it best
        return None


def _unknown_key(cfg: DictConfig, override: Any) -> str | None:
    """The message for a key `cfg` lacks (None when it has it, or when this cannot tell: a key under a list,
    a value or an interpolation is Hydra's to report)."""
    key = override.key_or_group
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_interpolation() or node._is_missing():
            return None
        keys = [str(k) for k in node.keys()]
        if part not in keys:
            parent, rest = ".".join(parts[:depth]), parts[depth + 1 :]
            return _unknown_message(key, parent, part, rest, keys, override.input_line)
        node = node._get_node(part)
        if isinstance(node, ListConfig):
            return None
    return None


def _unknown_message(key: str, parent: str, part: str, rest: list[str], keys: list[str], line: str) -> str:
    """`Did you mean` the closest keys at that level (difflib; only those about as close as the best), with the
    rest of the path; else the keys there are."""
    add = f"(To add a new key on purpose, use +{line}.)"
    if not keys:
        return f"Unknown key {key}: {parent} holds no keys yet. Fix: add it with +{line}."
    scores = {k: difflib.SequenceMatcher(None, part, k).ratio() for k in keys}
    best = max(scores.values())
    close = sorted(
        (k for k, score in scores.items() if score >= 0.6 and score >= best - 0.1), key=scores.get, reverse=True
    )[:3]
    if close:
        guesses = " or ".join(".".join(filter(None, [parent, k, *rest])) for k in close)
        return f"Unknown key {key}. Did you mean {guesses}? {add}"
    shown = ", ".join(sorted(keys)[:15]) + (", ..." if len(keys) > 15 else "")
    return f"Unknown key {key}: {parent or 'the config'} has no key {part} (its keys: {shown}). {add}"


# ---------------------------------------------------------------------------------------------- values and types


def validate(cfg: DictConfig, task: str) -> DictConfig:
    """Checks (and normalises, in place) the values people type most, for `task` (train, evaluate, predict,
    export): only keys the config has are looked at. Raises one `ConfigError` listing every mistake."""
    errors: list[str] = []
    for name in ("data", "data_overrides"):
        node = _node(cfg, name)
        if node is not None:
            _check_data(node, name, errors)
    optimizer = _node(cfg, "optimizer")
    if optimizer is not None:
        _check(
            optimizer,
            "optimizer",
            "lr",
            errors,
            _number(minimum=0, strict=True),
            "optimizer.lr=0.001",
            "a number > 0 (the learning rate)",
        )
        _check(
            optimizer,
            "optimizer",
            "weight_decay",
            errors,
            _number(minimum=0),
            "optimizer.weight_decay=0.0001",
            "a number >= 0",
        )
    trainer = _node(cfg, "trainer")
    if trainer is not None:
        _check_trainer(trainer, errors)
    backbone = _node(cfg, "backbone")
    if backbone is not None:
        _check_backbone(backbone, errors)
    inference = _node(cfg, "inference")
    if inference is not None:
        for key in ("crop_size", "stride"):
            _check(
                inference,
                "inference",
                key,
                errors,
                _size(),
                f"inference.{key}=[512,512]",
                "null, two whole numbers >= 1 (H, W) or one for a square",
            )
        _check(inference, "inference", "blend", errors, _one_of(BLENDS, "a blend"), "inference.blend=mean", str(BLENDS))
        _check(
            inference,
            "inference",
            "window_above",
            errors,
            _int(minimum=1),
            "inference.window_above=4096",
            "a whole number >= 1 (the side of a square: images with more pixels go window by window)",
        )
    if task == "predict":
        _check(cfg, "", "batch_size", errors, _int(minimum=1), "batch_size=8", "a whole number >= 1")
        _check(cfg, "", "save_probabilities", errors, _bool, "save_probabilities=true", "true or false")
        _check(
            cfg,
            "",
            "probability_format",
            errors,
            _one_of(PROBABILITY_FORMATS, "a probability format"),
            "probability_format=uint8",
            str(PROBABILITY_FORMATS),
        )
        _check(cfg, "", "num_workers", errors, _int(minimum=0), "num_workers=2", "a whole number >= 0")
    if errors:
        head = "Config error:" if len(errors) == 1 else f"{len(errors)} config errors:"
        raise ConfigError("\n".join([head, *(f"  - {e}" for e in errors)]))
    return cfg


def _check_data(data: DictConfig, prefix: str, errors: list[str]) -> None:
    _check(
        data,
        prefix,
        "batch_size",
        errors,
        _int(minimum=1),
        f"{prefix}.batch_size=8",
        "a whole number >= 1 (images per training batch)",
    )
    _check(
        data,
        prefix,
        "eval_batch_size",
        errors,
        _int(minimum=1, none=True),
        f"{prefix}.eval_batch_size=1",
        "null (the batch size) or a whole number >= 1",
    )
    _check(
        data,
        prefix,
        "num_workers",
        errors,
        _auto_or(_int(minimum=0)),
        f"{prefix}.num_workers=auto",
        "auto (follows the machine's CPUs) or a whole number >= 0 (DataLoader worker processes; 0 reads in the "
        "main process)",
    )
    for key in SIZE_KEYS:
        _check(
            data,
            prefix,
            key,
            errors,
            _size(),
            f"{prefix}.{key}=[256,256]",
            "two whole numbers >= 1 (H, W), or one for a square",
        )
    _check(data, prefix, "in_channels", errors, _int(minimum=1), f"{prefix}.in_channels=3", "a whole number >= 1")
    _check(data, prefix, "repeat", errors, _int(minimum=1), f"{prefix}.repeat=1", "a whole number >= 1")
    _check_folds(data, prefix, errors)
    _check(
        data,
        prefix,
        "sampling",
        errors,
        _one_of(SAMPLINGS, "a sampling"),
        f"{prefix}.sampling=class_balanced",
        " or ".join(SAMPLINGS),
    )
    _check(
        data,
        prefix,
        "sampling_threshold",
        errors,
        _number(minimum=0, strict=True),
        f"{prefix}.sampling_threshold=0.1",
        "a number > 0 (classes in a smaller share of the training images are repeated)",
    )
    ignore = _check(
        data, prefix, "ignore_index", errors, _int(none=True), f"{prefix}.ignore_index=255", "null or a whole number"
    )
    num_classes = _check(
        data,
        prefix,
        "num_classes",
        errors,
        _int(minimum=2),
        f"{prefix}.num_classes=2",
        "a whole number >= 2 (binary segmentation is 2 classes: background and foreground)",
    )
    if num_classes is ABSENT:
        return
    for key, what in (("class_names", "one name per class"), ("palette", "one [R, G, B] colour per class")):
        value = _value(data, key)
        if value is ABSENT or value is None:
            continue
        if not isinstance(value, (list, ListConfig)) or len(value) != num_classes:
            count = f"{len(value)} entries" if isinstance(value, (list, ListConfig)) else f"the value {_show(value)}"
            errors.append(
                f"{prefix}.{key} has {count} but {prefix}.num_classes={num_classes}: {what} is needed. Fix: give "
                f"{num_classes} entries, or set {prefix}.num_classes to the number of classes (with class_names and "
                f"palette to match)."
            )
        elif key == "palette" and not all(_is_colour(c) for c in value):
            bad = next(c for c in value if not _is_colour(c))
            errors.append(
                f"{prefix}.palette has the entry {_show(bad)}: each colour is [R, G, B], whole numbers 0..255. "
                f"Fix: e.g. {prefix}.palette=[[0,0,0],[255,0,0]]."
            )
    if isinstance(ignore, int) and 0 <= ignore < num_classes:
        errors.append(
            f"{prefix}.ignore_index={ignore} is a class id ({prefix}.num_classes={num_classes}: classes are "
            f"0..{num_classes - 1}), so that class would never be learned nor scored. Allowed: null or a whole number "
            f"outside 0..{num_classes - 1}. Fix: {prefix}.ignore_index=255 (or null when nothing is ignored)."
        )


def _check_folds(data: DictConfig, prefix: str, errors: list[str]) -> None:
    """k-fold's two numbers (segkit.data.folds says the same when a datamodule is built from Python)."""
    num_folds = _check(
        data,
        prefix,
        "num_folds",
        errors,
        _int(minimum=2, none=True),
        f"{prefix}.num_folds=5",
        "null (no k-fold) or a whole number >= 2",
    )
    fold = _check(
        data, prefix, "fold", errors, _int(minimum=0), f"{prefix}.fold=0", "a whole number >= 0 (below num_folds)"
    )
    if isinstance(fold, int) and isinstance(num_folds, int) and fold >= num_folds:
        every = ",".join(map(str, range(num_folds)))
        errors.append(
            f"{prefix}.fold={fold} is outside 0..{num_folds - 1} ({prefix}.num_folds={num_folds}). Allowed: 0 to "
            f"{num_folds - 1}. Fix: {prefix}.fold=0, or every fold: python train.py -m {prefix}.fold={every}."
        )
    elif num_folds is None and isinstance(fold, int) and fold != 0:
        errors.append(
            f"{prefix}.fold={fold} but {prefix}.num_folds is null (k-fold is off). Fix: add {prefix}.num_folds=K "
            f"(e.g. 5), or drop {prefix}.fold."
        )


def _check_trainer(trainer: DictConfig, errors: list[str]) -> None:
    max_epochs = _check(
        trainer,
        "trainer",
        "max_epochs",
        errors,
        _int(minimum=1, none=True, also=(-1,)),
        "trainer.max_epochs=8",
        "a whole number >= 1, -1 (no limit) or null (Lightning's default)",
    )
    min_epochs = _check(
        trainer,
        "trainer",
        "min_epochs",
        errors,
        _int(minimum=0, none=True),
        "trainer.min_epochs=1",
        "null or a whole number >= 0",
    )
    if isinstance(max_epochs, int) and isinstance(min_epochs, int) and max_epochs >= 1 and min_epochs > max_epochs:
        errors.append(
            f"trainer.min_epochs={min_epochs} is more than trainer.max_epochs={max_epochs}: Lightning stops at "
            f"max_epochs regardless. Fix: lower trainer.min_epochs or raise trainer.max_epochs."
        )
    _check(
        trainer,
        "trainer",
        "accumulate_grad_batches",
        errors,
        _int(minimum=1),
        "trainer.accumulate_grad_batches=1",
        "a whole number >= 1 (batches per optimizer step)",
    )
    _check(trainer, "trainer", "num_nodes", errors, _int(minimum=1), "trainer.num_nodes=1", "a whole number >= 1")
    _check(
        trainer,
        "trainer",
        "devices",
        errors,
        _devices,
        "trainer.devices=1",
        "a whole number >= 1, -1 (all), auto, a list of device ids like [0,1], or a string like '0,1'",
    )
    precisions = lightning_precisions()
    _check(
        trainer,
        "trainer",
        "precision",
        errors,
        _one_of(precisions),
        "trainer.precision=32-true (or bf16-mixed on a GPU)",
        "one of " + ", ".join(map(str, precisions)),
    )


def _check_backbone(backbone: DictConfig, errors: list[str]) -> None:
    """The freezing keys (segkit.training.freezing), each alone and together."""
    freeze = _check(
        backbone,
        "backbone",
        "freeze",
        errors,
        _bool,
        "backbone.freeze=true",
        "true (the backbone does not train) or false",
    )
    _check(
        backbone,
        "backbone",
        "freeze_bn",
        errors,
        _bool,
        "backbone.freeze_bn=true",
        "true (the backbone's batch norms keep their statistics) or false",
    )
    epoch = _check(
        backbone,
        "backbone",
        "unfreeze_at_epoch",
        errors,
        _int(minimum=1, none=True),
        "backbone.unfreeze_at_epoch=2 (with backbone.freeze=true), or null",
        "null (never) or a whole number >= 1 (the 0-based epoch from which a frozen backbone trains)",
    )
    warmup = _check(
        backbone,
        "backbone",
        "unfreeze_warmup_steps",
        errors,
        _int(minimum=0),
        "backbone.unfreeze_warmup_steps=100",
        "a whole number >= 0 (optimizer steps of the backbone's warm-up after unfreezing)",
    )
    if isinstance(epoch, int) and freeze is False:
        errors.append(
            f"backbone.unfreeze_at_epoch={epoch} with backbone.freeze=false: a backbone that is not frozen has nothing "
            "to unfreeze. Fix: backbone.freeze=true (frozen until that epoch), or backbone.unfreeze_at_epoch=null."
        )
    if isinstance(warmup, int) and warmup > 0 and epoch is None:
        errors.append(
            f"backbone.unfreeze_warmup_steps={warmup} without backbone.unfreeze_at_epoch: there is no unfreezing to "
            "warm up. Fix: backbone.unfreeze_at_epoch=N (with backbone.freeze=true), or "
            "backbone.unfreeze_warmup_steps=0."
        )


def lightning_precisions() -> tuple[Any, ...]:
    """The values Lightning's Trainer takes for `precision`, from Lightning itself (its typing literals)."""
    from typing import get_args

    try:
        from lightning.fabric import connector
    except ImportError:  # pragma: no cover - Lightning is a dependency
        return (
            "32-true",
            "16-mixed",
            "bf16-mixed",
            "16-true",
            "bf16-true",
            "64-true",
            64,
            32,
            16,
            "64",
            "32",
            "16",
            "bf16",
        )
    names = ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_INT", "_PRECISION_INPUT_STR_ALIAS")
    return tuple(value for name in names if hasattr(connector, name) for value in get_args(getattr(connector, name)))


# A rule: the value (resolved) -> the value to keep (converted), or raises _Invalid with what is wrong.
Rule = Callable[[Any], Any]


class _Invalid(Exception):
    pass


def _check(node: DictConfig, prefix: str, key: str, errors: list[str], rule: Rule, fix: str, allowed: str) -> Any:
    """Applies `rule` to `node[key]` when the key is there: converts it in place, or records the error. Returns
    the (converted) value, or ABSENT."""
    value = _value(node, key)
    if value is ABSENT:
        return ABSENT
    full = f"{prefix}.{key}" if prefix else key
    try:
        converted = rule(value)
    except _Invalid as what:
        errors.append(f"{full}={_show(value)} {what}. Allowed: {allowed}. Fix: {fix}.")
        return ABSENT
    if _differs(converted, value):
        node[key] = converted
    return converted


def _node(cfg: DictConfig, key: str) -> DictConfig | None:
    value = _value(cfg, key)
    return value if isinstance(value, DictConfig) else None


def _value(node: DictConfig, key: str) -> Any:
    """`node[key]` resolved, or ABSENT when the key is not there, is `???`, or does not resolve (the code that
    reads it reports that better)."""
    if key not in node.keys():
        return ABSENT
    try:
        value = node[key]
    except Exception:  # noqa: BLE001
        return ABSENT
    return value


def _differs(converted: Any, value: Any) -> bool:
    if isinstance(value, ListConfig):
        value = list(value)
    return type(converted) is not type(value) or converted != value


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) + (" (a string)" if not value.strip() or _as_number(value) is None else "")
    if isinstance(value, ListConfig):
        return str(list(value))
    return str(value)


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("is a boolean, not a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _Invalid("is not a whole number")
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise _Invalid("is not a whole number")


def _int(minimum: int | None = None, none: bool = False, also: tuple[int, ...] = ()) -> Rule:
    def rule(value: Any) -> Any:
        if value is None:
            if none:
                return None
            raise _Invalid("is null")
        number = _to_int(value)
        if minimum is not None and number < minimum and number not in also:
            raise _Invalid(f"is out of range (below {minimum})")
        return number

    return rule


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Invalid("is not true or false")


def _auto_or(rule: Rule) -> Rule:
    """`auto` (kept as it is: resolved where the value is used, on the machine that runs it), else `rule`."""

    def either(value: Any) -> Any:
        return value if isinstance(value, str) and value.strip() == "auto" else rule(value)

    return either


def _number(minimum: float, strict: bool = False) -> Rule:
    def rule(value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            raise _Invalid("is not a number")
        if isinstance(value, str):
            number = _as_number(value)
            if number is None:
                raise _Invalid("is not a number")
            value = number
        if not isinstance(value, (int, float)) or value != value:  # NaN
            raise _Invalid("is not a number")
        if value < minimum or (strict and value == minimum):
            raise _Invalid(f"is out of range ({'not above' if strict else 'below'} {minimum})")
        return value

    return rule


def _size() -> Rule:
    """(H, W): a list of two positive whole numbers; one number is a square and becomes [n, n] in the config."""

    def rule(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple, ListConfig)):
            if len(value) != 2:
                raise _Invalid(f"has {len(value)} entries, not 2 (H, W)")
            sides = [_to_int(side) for side in value]
        else:
            side = _to_int(value)
            sides = [side, side]
        if min(sides) < 1:
            raise _Invalid("has a side below 1")
        return sides

    return rule


def _devices(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text == "auto" or re.fullmatch(r"-1|\d+|(\d+\s*,\s*)*\d+\s*,?", text):
            return value
        raise _Invalid("is not a device count or list")
    if isinstance(value, (list, tuple, ListConfig)):
        ids = [_to_int(v) for v in value]
        if not ids or min(ids) < 0:
            raise _Invalid("is not a list of device ids (whole numbers >= 0)")
        return value
    number = _to_int(value)
    if number < 1 and number != -1:
        raise _Invalid("is out of range")
    return number


def _one_of(allowed: tuple[Any, ...], what: str = "a precision Lightning knows") -> Rule:
    def rule(value: Any) -> Any:
        if isinstance(value, bool) or value not in allowed:
            raise _Invalid(f"is not {what}")
        return value

    return rule


def _is_colour(value: Any) -> bool:
    if not isinstance(value, (list, tuple, ListConfig)) or len(value) != 3:
        return False
    return all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
