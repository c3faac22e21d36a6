"""k-fold cross-validation of a dataset's training pool (`data.num_folds=K data.fold=i`): what would be the train
and val splits is cut into K folds, fold i validates and the others train; the test split is never touched.

The cut is a function of the pool's keys and the seed alone (sorted keys, shuffled with the seed), so every job
of `python train.py -m data.fold=0,1,2,3,4` cuts the same folds, on any machine, and a resumed job the same again.
Optional groups keep images together (the slices of one patient, the tiles of one scene): a group id taken from
each key by a regular expression, or read from a list file of `key group` lines. Groups are dealt largest first,
each to the fold holding the fewest images so far, which balances the folds' sizes (without groups every image
is its own group, and fold sizes differ by at most one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from segkit.errors import Refusal


class FoldError(Refusal, ValueError):
    """k-fold settings that cannot cut the pool as asked: the key, the value and the fix."""


@dataclass(frozen=True)
class FoldSettings:
    """What `data.num_folds`, `data.fold`, `data.fold_group` and `data.fold_group_file` ask for.

    Args:
        num_folds: K >= 2.
        fold: the validation fold, 0 <= fold < K.
        seed: the shuffle of the sorted keys (the layout's `split_seed`).
        group: a regular expression searched in each key; its first group (or the whole match) is the group id.
        group_file: a text file of `key group` lines (relative to data.root, or absolute).
    """

    num_folds: int
    fold: int = 0
    seed: int = 0
    group: str | None = None
    group_file: str | None = None

    def __post_init__(self) -> None:
        check_fold_settings(self.num_folds, self.fold, self.group, self.group_file)

    def describe(self) -> str:
        """`fold 2 of 5, grouped by <how>`: the facts a run logs."""
        how = ""
        if self.group:
            how = f", grouped by data.fold_group={self.group!r}"
        elif self.group_file:
            how = f", grouped by data.fold_group_file={self.group_file}"
        return f"fold {self.fold} of {self.num_folds} (data.fold={self.fold}, data.num_folds={self.num_folds}{how})"


def fold_settings(
    num_folds: int | None, fold: int | None, seed: int, group: str | None, group_file: str | None
) -> FoldSettings | None:
    """The settings of a datamodule's arguments; None when k-fold is off (`num_folds` null), where a `fold` other
    than 0 or a group is refused (it would silently do nothing)."""
    if num_folds is None:
        if fold not in (None, 0) or group or group_file:
            what = f"data.fold={fold}" if fold not in (None, 0) else "data.fold_group / data.fold_group_file"
            raise FoldError(
                f"{what} is set but data.num_folds is null (k-fold is off). Fix: add data.num_folds=K (e.g. 5), "
                "or drop the fold settings."
            )
        return None
    return FoldSettings(int(num_folds), int(fold or 0), int(seed), group or None, group_file or None)


def check_fold_settings(num_folds: int, fold: int, group: str | None = None, group_file: str | None = None) -> None:
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise FoldError(
            f"data.num_folds={num_folds}: k-fold needs at least 2 folds. Fix: data.num_folds=5 (or null for no k-fold)."
        )
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise FoldError(
            f"data.fold={fold} is outside 0..{num_folds - 1} (data.num_folds={num_folds}). Fix: data.fold=0, or run "
            f"every fold: python train.py -m data.fold={','.join(map(str, range(num_folds)))}."
        )
    if group and group_file:
        raise FoldError(
            "data.fold_group and data.fold_group_file are both set. Fix: keep one (a pattern on the file names, or "
            "a list file of `key group` lines)."
        )
    if group:
        try:
            re.compile(group)
        except re.error as err:
            raise FoldError(
                f"data.fold_group={group!r} is not a regular expression ({err}). Fix: e.g. "
                "data.fold_group='^(patient\\d+)_' (its first group is the group id)."
            ) from None


def groups_by_pattern(keys: Sequence[str], pattern: str, files: Sequence[str]) -> list[str]:
    """Each key's group: the first group of `pattern` searched in it (the whole match if it has none). A key it
    does not match is refused, naming its file (`files[i]` is key i's)."""
    compiled = re.compile(pattern)
    groups = []
    for key, file in zip(keys, files):
        found = compiled.search(key)
        if found is None:
            raise FoldError(
                f"data.fold_group={pattern!r} does not match the key {key!r} of {file}, so its group is unknown. "
                "Fix: change the pattern so that it matches every image's key (its path under the image folder, "
                "without the suffix), or use data.fold_group_file (a list of `key group` lines)."
            )
        groups.append(found.group(1) if compiled.groups else found.group(0))
    return groups


def groups_from_file(keys: Sequence[str], path: Path, files: Sequence[str]) -> list[str]:
    """Each key's group from a text file of `key group` lines (`#` comments); a key it does not list is refused."""
    if not path.is_file():
        raise FoldError(
            f"data.fold_group_file={path} does not exist. Fix: write one `key group` line per image there (the key "
            "is the image's path under the image folder without the suffix), or set data.fold_group_file=null."
        )
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise FoldError(f"{path}:{number}: expected `key group`, got {line!r}. Fix: one key and its group a line.")
        table[parts[0]] = parts[1]
    missing = sorted((key, file) for key, file in zip(keys, files) if key not in table)
    if missing:
        key, file = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FoldError(
            f"data.fold_group_file={path} has no line for the key {key!r} of {file}{more}. Fix: add `{key} <group>` "
            "to it."
        )
    return [table[key] for key in keys]


def assign_folds(keys: Sequence[str], num_folds: int, seed: int = 0, groups: Sequence[str] | None = None) -> list[int]:
    """The fold (0..K-1) of each key. The same keys, seed and groups give the same folds, in any order.

    Args:
        keys: one unique name per image.
        num_folds: K.
        seed: the shuffle of the sorted groups, which breaks ties between groups of one size.
        groups: each key's group (None: every key its own); a group is never split between folds.

    Example:
        >>> from segkit.data.folds import assign_folds
        >>> assign_folds(["a", "b", "c", "d", "e"], 2)
        [1, 0, 0, 0, 1]
    """
    if len(set(keys)) != len(keys):
        raise ValueError("assign_folds: the keys must be unique.")
    groups = list(keys) if groups is None else list(groups)
    names = sorted(set(groups))
    if len(names) < num_folds:
        what = "images" if len(names) == len(keys) else f"groups (of {len(keys)} images)"
        raise FoldError(
            f"data.num_folds={num_folds} but the training pool holds only {len(names)} {what}: a fold would be "
            f"empty. Fix: data.num_folds={max(len(names), 2)} or fewer, or add images."
        )
    sizes = {name: 0 for name in names}
    for group in groups:
        sizes[group] += 1
    rank = {names[i]: r for r, i in enumerate(np.random.default_rng(seed).permutation(len(names)))}
    filled = [0] * num_folds
    fold_of: dict[str, int] = {}
    for name in sorted(names, key=lambda n: (-sizes[n], rank[n])):
        fold = min(range(num_folds), key=lambda f: (filled[f], f))
        fold_of[name] = fold
        filled[fold] += sizes[name]
    return [fold_of[group] for group in groups]
