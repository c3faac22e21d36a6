"""The layouts of datasets on disk, one config away: `FolderDataModule` pairs an image folder with a mask folder
by relative path and stem (ISBI membrane, VOC, ADE20K, Cityscapes are configs of it); `ListFileDataModule` reads
list files of image/mask path pairs (CamVid/SegNet). Encodings, pipelines and checks are their base's,
`segkit.data.filedata.FileDataModule`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from segkit.data.datamodule import SPLITS
from segkit.data.dataset import Sample
from segkit.data.filedata import FileDataModule
from segkit.data.files import IMAGE_SUFFIXES, broken_link
from segkit.data.scan import Problem


def _suffixes(value: str | Sequence[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _strip_suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix.lower()):
            return name[: len(name) - len(suffix)]
    return None


def suffix_pattern(suffixes: Sequence[str]) -> str:
    """`.png` or `{.png,.jpg}`: the suffixes as a shell pattern, for messages."""
    return suffixes[0] if len(suffixes) == 1 else "{" + ",".join(suffixes) + "}"


def list_keys(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """key (relative path without the suffix) -> file, for every file under `folder` with one of the suffixes.
    Broken links are listed too (callers report them as such): skipping them would make their pairs look orphaned."""
    keys = {}
    for path in sorted(folder.rglob("*")):
        if (path.is_file() or broken_link(path)) and not path.name.startswith("."):
            key = _strip_suffix(path.relative_to(folder).as_posix(), suffixes)
            if key is not None:
                keys[key] = path
    return keys


class FolderDataModule(FileDataModule):
    """Images under `root/image_dir`, masks under `root/mask_dir`, matched by relative path and stem:
    `image_dir/<key><image_suffix>` pairs with `mask_dir/<key><mask_suffix>`; sub-folders are searched.

    `split_by` says what `splits` holds for each split:
    - folders: a folder name, put in place of `{split}` in image_dir and mask_dir (`{split}/images`), or
      appended to them (`images` -> `images/<name>`);
    - lists: a text file (relative to root) of keys, one per line (VOC's ImageSets);
    - ratio: a fraction of all pairs, drawn with `split_seed` (e.g. {train: 0.8, val: 0.2}).
    A split missing from `splits` (or null) is empty. `data=folder` in a config (and voc, cityscapes, ade20k).

    Args:
        root: the dataset's folder.
        image_dir: the images' folder under root (`{split}` in it is replaced by the split's folder).
        mask_dir: the masks' folder under root (likewise).
        image_suffix: the images' file endings (one, or several).
        mask_suffix: the masks' file ending.
        split_by: "folders", "lists" or "ratio" (above).
        splits: what each split is, by split_by: {train: ..., val: ..., test: ...}.
        split_seed: the draw of split_by=ratio, and of k-fold's folds (`num_folds`, FileDataModule).
        **kwargs: `FileDataModule`'s arguments (mask encoding, pipelines, check) and `SegDataModule`'s.

    Example:
        >>> from segkit.data import FolderDataModule
        >>> data = FolderDataModule(
        ...     root="my_data", splits={"train": 0.8, "val": 0.2}, num_classes=2, class_names=["bg", "cell"],
        ...     palette=[[0, 0, 0], [255, 255, 255]], mask_encoding="values", mask_values=[0, 255],
        ... )  # doctest: +SKIP
        >>> data.setup("fit")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        image_dir: str = "images",
        mask_dir: str = "masks",
        image_suffix: str | Sequence[str] = IMAGE_SUFFIXES,
        mask_suffix: str = ".png",
        split_by: str = "ratio",
        splits: Mapping[str, Any] | None = None,
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, fold_seed=split_seed, **kwargs)
        if split_by not in ("folders", "lists", "ratio"):
            raise ValueError(f"data.split_by={split_by!r} is not one of folders, lists, ratio.")
        splits = {k: v for k, v in (splits or {}).items() if v is not None}
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.splits has unknown split(s) {sorted(unknown)}; use {SPLITS}.")
        if split_by == "ratio":
            total = sum(float(v) for v in splits.values())
            if total > 1 + 1e-6 or any(float(v) < 0 for v in splits.values()):
                raise ValueError(f"data.splits fractions must be >= 0 and sum to at most 1, got {splits}.")
        self.image_dir, self.mask_dir = image_dir, mask_dir
        self.dirs = (image_dir, mask_dir)
        self.image_suffixes = _suffixes(image_suffix)
        self.mask_suffix = mask_suffix
        self.split_by = split_by
        self.splits = splits
        self.split_seed = split_seed

    def _dirs(self, split: str) -> tuple[Path, Path]:
        if self.split_by != "folders":
            return self.root / self.image_dir, self.root / self.mask_dir
        name = str(self.splits.get(split, split))
        return tuple(self.root / (d.format(split=name) if "{split}" in d else f"{d}/{name}") for d in self.dirs)

    def image_pattern(self, split: str) -> str:
        """What is searched for the split's images, relative to data.root: `images/**/*{.png,.jpg}`, or
        `JPEGImages/<key>.jpg` for keys from a list file."""
        image_dir, _ = self._dirs(split)
        relative = image_dir.relative_to(self.root).as_posix() if image_dir.is_relative_to(self.root) else image_dir
        suffixes = suffix_pattern(self.image_suffixes)
        return f"{relative}/<key>{suffixes}" if self.split_by == "lists" else f"{relative}/**/*{suffixes}"

    def find_samples(self, split: str) -> tuple[list[Sample], list[Problem]]:
        if split not in self.splits:
            return [], []
        image_dir, mask_dir = self._dirs(split)
        problems: list[Problem] = []
        if self.split_by == "lists":
            keys, problems = self._listed_images(split, image_dir)
        else:
            keys = list_keys(image_dir, self.image_suffixes) if image_dir.is_dir() else {}
            # With ratio splits every split lists the same folders: their strays are reported once, in the first.
            if self.split_by == "folders" or split == next(s for s in SPLITS if s in self.splits):
                listed = mask_dir / self.class_names[0] if self.label_layout == "folders" else mask_dir
                masks = list_keys(listed, (self.mask_suffix,)) if listed.is_dir() else {}
                problems += [
                    Problem(
                        str(path),
                        "mask without image",
                        f"{path}: a mask with no image (no {self.image_pattern(split).replace('**/*', key)} under "
                        f"data.root={self.root}).",
                        fatal=False,
                    )
                    for key, path in masks.items()
                    if key not in keys
                ]
            if self.split_by == "ratio":
                keys = _ratio_split(keys, self.splits, split, self.split_seed)
        samples = []
        for key, image in keys.items():
            masks = self.mask_files(mask_dir, key)
            broken = next(((path, why) for path in (image, *masks) if (why := broken_link(path))), None)
            missing = [mask for mask in masks if not mask.is_file()]
            if broken is not None:
                problems.append(Problem(str(broken[0]), "broken link", broken[1]))
            elif not missing:
                labels = tuple(masks) if self.label_layout == "folders" else ()
                samples.append(Sample(image, masks[0], key, label_masks=labels))
            else:
                which = "a mask per label, " if self.label_layout == "folders" else ""
                problems.append(
                    Problem(
                        str(image),
                        "missing mask",
                        f"{image}: no mask; expected {which}{', '.join(map(str, missing))}. Fix: add the mask, remove "
                        f"the image, or set data.mask_dir / data.mask_suffix.",
                    )
                )
        return samples, problems

    def mask_files(self, mask_dir: Path, key: str) -> list[Path]:
        """The mask file(s) of an image: one, or with a multi-label task's label folders one per label."""
        if self.label_layout == "folders":
            return [mask_dir / label / f"{key}{self.mask_suffix}" for label in self.class_names]
        return [mask_dir / f"{key}{self.mask_suffix}"]

    def _listed_images(self, split: str, image_dir: Path) -> tuple[dict[str, Path], list[Problem]]:
        list_file = self.root / str(self.splits[split])
        if not list_file.is_file():
            return {}, [missing_list(list_file, split, f"data.splits.{split}", self.root)]
        keys, problems = {}, []
        for key in _read_lines(list_file):
            key = key.split()[0]
            candidates = [image_dir / f"{key}{s}" for s in self.image_suffixes]
            found = next((path for path in candidates if path.is_file()), None)
            link = next((path for path in candidates if broken_link(path)), None)
            if found is None and link is not None:
                keys[key] = link  # reported as a broken link with its pair
            elif found is None:
                problems.append(
                    Problem(
                        str(list_file),
                        "missing image",
                        f"{list_file}: lists {key!r} but no {image_dir / key}{suffix_pattern(self.image_suffixes)} "
                        f"exists. Fix: check data.root, data.image_dir and data.image_suffix, or remove the line.",
                    )
                )
            else:
                keys[key] = found
        return keys, problems

    def empty_split_message(self, split: str) -> str:
        """Why the split found nothing, from the settings and the folders: the first of a missing split entry, a
        missing image folder, no file matching the pattern, a fraction too small, or images without masks."""
        where = f"data.root={self.root}"
        if split not in self.splits:
            example = {"ratio": "0.1", "folders": split, "lists": f"ImageSets/{split}.txt"}[self.split_by]
            return (
                f"The {split} split is empty: data.splits has no {split} entry ({where}, data.split_by="
                f"{self.split_by}, data.splits={_as_override(self.splits)}). "
                f"Fix: add one, e.g. data.splits.{split}={example}"
                + (
                    ", or run with test=false (train.py scores the test split after fitting when test=true)."
                    if split == "test"
                    else "."
                )
            )
        image_dir, mask_dir = self._dirs(split)
        pattern = self.image_pattern(split)
        if self.split_by == "lists":
            list_file = self.root / str(self.splits[split])
            if not list_file.is_file():
                return missing_list(list_file, split, f"data.splits.{split}", self.root).message
            return (
                f"The {split} split is empty: its list {self.root / str(self.splits[split])} names no image "
                f"(keys are looked up as {pattern} under {where}). Fix: list the split's image keys, one per line."
            )
        if not image_dir.is_dir():
            fix = "data.image_dir" + (f" and data.splits.{split}" if self.split_by == "folders" else "")
            return (
                f"The {split} split is empty: the image folder {image_dir} does not exist (searched {pattern} under "
                f"{where}, which holds {folder_listing(self.root)}). Fix: set {fix} to the folder of the images "
                f"under data.root, or data.root to the dataset's folder."
            )
        images = {k: p for k, p in list_keys(image_dir, self.image_suffixes).items() if not broken_link(p)}
        if not images:
            other = next((p for p in image_dir.rglob("*") if p.is_file() and p.suffix), None)
            example = f" (e.g. data.image_suffix={other.suffix})" if other is not None else ""
            return (
                f"The {split} split is empty: no file matches {pattern} under {where} ({image_dir} holds "
                f"{folder_listing(image_dir)}). Fix: put the images there, or set data.image_dir / data.image_suffix "
                f"to match the files{example}."
            )
        if self.split_by == "ratio" and not _ratio_split(images, self.splits, split, self.split_seed):
            return (
                f"The {split} split is empty: data.splits.{split}={self.splits[split]} of the {len(images)} image(s) "
                f"matching {pattern} under {where} rounds to no image. Fix: raise data.splits.{split} (to at least "
                f"{1 / len(images):.2g}), or add images."
            )
        return (
            f"The {split} split is empty: none of the {len(images)} image(s) matching {pattern} under {where} has a "
            f"mask {mask_dir}/<key>{self.mask_suffix}. Fix: check data.mask_dir and data.mask_suffix."
        )


def folder_listing(folder: Path, limit: int = 5) -> str:
    """What a folder holds, for a message that says what was found instead: `3 entries: a/, b.txt, c.webp`."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return "nothing readable"
    if not entries:
        return "nothing"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(names)}{more}"


def missing_list(list_file: Path, split: str, key: str, root: Path) -> Problem:
    found = list_in_subfolder(list_file, root)
    if found is not None:  # data.root names the dataset's parent folder: say which folder holds the lists
        fix = f"Found {found / list_file.relative_to(root)}. Fix: data.root={found}"
    else:
        fix = f"Fix: check data.root and {key}" + (
            ", or run with test=false if there is no test split" if split == "test" else ""
        )
    return Problem(
        str(list_file),
        "missing list",
        f"{list_file}: the {split} list file does not exist ({key} is relative to data.root={root}, which holds "
        f"{folder_listing(root)}). {fix}.",
    )


def list_in_subfolder(list_file: Path, root: Path) -> Path | None:
    """The sub-folder of `root` (one level down, first by name) that holds the list file `list_file` names
    relative to `root`; None if none does, or if the list is not under `root`."""
    if not list_file.is_relative_to(root):
        return None
    relative = list_file.relative_to(root)
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return None
    return next((folder for folder in folders if (folder / relative).is_file()), None)


def _as_override(mapping: Mapping[str, Any]) -> str:
    """`{train: 0.8, val: 0.2}`: a mapping as it is written on the command line."""
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _ratio_split(keys: dict[str, Path], ratios: Mapping[str, Any], split: str, seed: int) -> dict[str, Path]:
    """The same partition for every split of one seed: shuffle the sorted keys, cut by cumulative fractions."""
    order = sorted(keys)
    perm = np.random.default_rng(seed).permutation(len(order))
    start = 0.0
    for name in SPLITS:
        fraction = float(ratios.get(name, 0))
        lo, hi = round(start * len(order)), round((start + fraction) * len(order))
        if name == split:
            return {order[i]: keys[order[i]] for i in sorted(perm[lo:hi])}
        start += fraction
    return {}


class ListFileDataModule(FileDataModule):
    """List files with `image_path mask_path` per line (CamVid/SegNet), paths relative to `root` (or absolute).
    `data=lists` in a config (and camvid). A multi-label task's lines name the image, then a mask per label in
    class_names' order (`label_layout=folders`), or the image and one file of every label's plane (`file`).

    Args:
        root: the dataset's folder.
        lists: the list file of each split, relative to root: {train: train.txt, val: val.txt, test: null}.
        strip_prefix: removed from the start of every listed path, e.g. SegNet's `/SegNet/CamVid/`.
        split_seed: the draw of k-fold's folds (`num_folds`, FileDataModule).
        **kwargs: `FileDataModule`'s arguments (mask encoding, pipelines, check) and `SegDataModule`'s.

    Example:
        >>> from segkit.data import ListFileDataModule
        >>> data = ListFileDataModule(
        ...     root="CamVid", lists={"train": "train.txt", "val": "val.txt"}, strip_prefix="/SegNet/CamVid/",
        ...     num_classes=12, class_names=[...], palette=[...], ignore_index=11,
        ... )  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        lists: Mapping[str, str] | None = None,
        strip_prefix: str = "",
        split_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, fold_seed=split_seed, **kwargs)
        self.lists = {k: v for k, v in (lists or {}).items() if v is not None}
        self.strip_prefix = strip_prefix

    def _resolve(self, entry: str) -> Path:
        if self.strip_prefix and entry.startswith(self.strip_prefix):
            entry = entry[len(self.strip_prefix) :]
        return self.root / entry  # an absolute entry stays absolute

    def find_samples(self, split: str) -> tuple[list[Sample], list[Problem]]:
        if split not in self.lists:
            return [], []
        list_file = self.root / self.lists[split]
        if not list_file.is_file():
            return [], [missing_list(list_file, split, f"data.lists.{split}", self.root)]
        samples, problems = [], []
        per_label = self.label_layout == "folders"  # a multi-label task's line: the image, then a mask per label
        columns, expected = (1 + self.num_classes if per_label else 2), self.line_format()
        for number, line in enumerate(_read_lines(list_file), start=1):
            parts = line.split()
            if len(parts) != columns:
                message = f"{list_file}:{number}: expected `{expected}`, got {line!r}."
                if per_label and len(parts) == 2:
                    message += " Fix: data.label_layout=file if each line names one file of every label's plane."
                problems.append(Problem(str(list_file), "bad list line", message))
                continue
            image, *masks = (self._resolve(p) for p in parts)
            links = [message for message in map(broken_link, (image, *masks)) if message]
            if links:
                path = next(p for p in (image, *masks) if broken_link(p))
                problems.append(Problem(str(path), "broken link", f"{list_file}:{number}: {' '.join(links)}"))
                continue
            missing = [p for p in (image, *masks) if not p.is_file()]
            if missing:
                problems.append(
                    Problem(
                        str(missing[0]),
                        "missing file",
                        f"{list_file}:{number}: {', '.join(map(str, missing))} not found. "
                        f"Fix: check data.root (and data.strip_prefix for lists with absolute paths).",
                    )
                )
                continue
            name = image.relative_to(self.root) if image.is_relative_to(self.root) else image
            key = name.with_suffix("").as_posix().lstrip("/")
            samples.append(Sample(image, masks[0], key, label_masks=tuple(masks) if per_label else ()))
        return samples, problems

    def line_format(self) -> str:
        """What a list line holds: `image mask`, or a multi-label task's `image mask_<label> ...` per label."""
        if self.label_layout != "folders":
            return "image mask"
        return "image " + " ".join(f"mask_{name}" for name in self.class_names)

    def empty_split_message(self, split: str) -> str:
        if split not in self.lists:
            return (
                f"The {split} split is empty: data.lists has no {split} entry (data.root={self.root}, data.lists="
                f"{_as_override(self.lists)}). Fix: add one, e.g. data.lists.{split}={split}.txt (a file of "
                f"`{self.line_format()}` lines, paths relative to data.root)"
                + (
                    ", or run with test=false (train.py scores the test split after fitting when test=true)."
                    if split == "test"
                    else "."
                )
            )
        if not (self.root / self.lists[split]).is_file():
            return missing_list(self.root / self.lists[split], split, f"data.lists.{split}", self.root).message
        return (
            f"The {split} split is empty: its list {self.root / self.lists[split]} has no `{self.line_format()}` "
            f"line (data.root={self.root}). Fix: add the split's images, a line of paths each."
        )
