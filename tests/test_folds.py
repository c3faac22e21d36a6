"""k-fold cross-validation (segkit.data.folds, `data.num_folds=K data.fold=i`): the folds partition the training
pool, deterministically and balanced; groups are never split; the test split is untouched; mistakes are refused
naming the key or the file. Datamodules are built in this process on a dataset of tiny files (no training)."""

import csv
import json
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, compose_config, run_entry
from helpers.fake_data import THREE_CLASSES, blocks, image_for, save
from segkit.config.checks import ConfigError, validate
from segkit.data import FolderDataModule, ListFileDataModule
from segkit.data.folds import FoldError, assign_folds
from segkit.runs.resume import merge_repeats, plan, recorded_overrides

CLASS_FACTS = {"num_classes": 3, "class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}


def patients(root: Path, counts=(1, 2, 3, 4, 2, 3, 1, 2)) -> Path:
    """images/p<i>_s<j>.png and masks: patient i has counts[i] slices (18 images)."""
    rng = np.random.default_rng(0)
    for patient, slices in enumerate(counts):
        for s in range(slices):
            mask = blocks(rng, size=(8, 12))
            save(root / "images" / f"p{patient}_s{s}.png", image_for(mask, rng))
            save(root / "masks" / f"p{patient}_s{s}.png", mask)
    return root


def folder(root: Path, **kwargs) -> FolderDataModule:
    settings = {"splits": {"train": 0.6, "val": 0.2, "test": 0.2}, "verify": "off", **CLASS_FACTS, **kwargs}
    return FolderDataModule(root=str(root), **settings)


def names(data: FolderDataModule, split: str) -> list[str]:
    return [s.name for s in data.make_dataset(split, augment=False).samples]


@pytest.fixture(scope="module")
def pool_root(tmp_path_factory) -> Path:
    return patients(tmp_path_factory.mktemp("folds"))


# ------------------------------------------------------------------------------------------------ the assignment


def test_assignment_is_a_balanced_deterministic_partition():
    keys = [f"img{i:03d}" for i in range(23)]
    folds = assign_folds(keys, 5, seed=3)
    assert sorted(Counter(folds).values()) == [4, 4, 5, 5, 5]  # sizes differ by at most one
    # The same for the keys in any order; another seed cuts other folds.
    shuffled = list(np.random.default_rng(1).permutation(keys))
    again = dict(zip(shuffled, assign_folds(shuffled, 5, seed=3)))
    assert [again[k] for k in keys] == folds
    assert assign_folds(keys, 5, seed=4) != folds


def test_groups_stay_whole_and_folds_balance():
    sizes = {"a": 5, "b": 1, "c": 3, "d": 3, "e": 2, "f": 2, "g": 1, "h": 4, "i": 1}
    groups = [g for g, n in sizes.items() for _ in range(n)]
    keys = [f"{g}{i}" for i, g in enumerate(groups)]
    folds = assign_folds(keys, 3, seed=0, groups=groups)
    by_group = {g: {f for f, gg in zip(folds, groups) if gg == g} for g in sizes}
    assert all(len(found) == 1 for found in by_group.values())  # never split
    assert sorted(Counter(folds).values()) == [7, 7, 8]  # 22 images, largest groups dealt first


def test_too_few_images_or_groups_for_the_folds():
    with pytest.raises(FoldError, match=r"data.num_folds=4 but the training pool holds only 3 images"):
        assign_folds(["a", "b", "c"], 4)
    with pytest.raises(FoldError, match=r"only 2 groups \(of 4 images\).*Fix: data.num_folds=2"):
        assign_folds(["a1", "a2", "b1", "b2"], 3, groups=["a", "a", "b", "b"])


# ----------------------------------------------------------------------------------------------- the datamodules


def test_folds_partition_the_pool_and_leave_the_test_split(pool_root):
    plain = folder(pool_root)
    pool = set(names(plain, "train")) | set(names(plain, "val"))
    test = names(plain, "test")
    assert len(pool) == 14 and len(test) == 4
    seen: list[str] = []
    for fold in range(4):
        data = folder(pool_root, num_folds=4, fold=fold)
        train, val = names(data, "train"), names(data, "val")
        assert set(train) | set(val) == pool and not set(train) & set(val)
        assert len(val) in (3, 4)
        assert names(data, "test") == test
        seen += val
    assert sorted(seen) == sorted(pool)  # every image validates in exactly one fold
    assert names(folder(pool_root, num_folds=4, fold=2), "val") == names(folder(pool_root, num_folds=4, fold=2), "val")


def test_grouped_by_a_pattern_of_the_file_names(pool_root, caplog):
    caplog.set_level("INFO", logger="segkit.data.filedata")
    patient = {}
    for fold in range(3):
        data = folder(pool_root, splits={"train": 1.0}, num_folds=3, fold=fold, fold_group=r"^(p\d+)_")
        for name in names(data, "val"):
            patient.setdefault(name.split("_")[0], set()).add(fold)
    assert len(patient) == 8 and all(len(folds) == 1 for folds in patient.values())
    assert "fold 2 of 3" in caplog.text and "in 8 groups" in caplog.text and "of a pool of 18" in caplog.text


def test_grouped_by_a_list_file_and_lists_layout(pool_root, tmp_path):
    root = tmp_path / "lists"
    root.mkdir()
    images = sorted((pool_root / "images").glob("*.png"))
    (root / "train.txt").write_text("".join(f"{p} {pool_root / 'masks' / p.name}\n" for p in images))
    table = "".join(f"{p.with_suffix('').as_posix().lstrip('/')} {p.stem[:2]}\n" for p in images)
    (root / "groups.txt").write_text("# key group\n" + table)
    found = []
    for fold in range(2):
        data = ListFileDataModule(
            root=str(root), lists={"train": "train.txt"}, verify="off", num_folds=2, fold=fold,
            fold_group_file="groups.txt", **CLASS_FACTS,
        )  # fmt: skip
        val = names(data, "val")
        assert {Path(n).name[:2] for n in val}.isdisjoint({Path(n).name[:2] for n in names(data, "train")})
        found += val
    assert len(found) == len(images) == 18


def test_a_key_the_pattern_or_the_list_misses_is_refused_naming_its_file(pool_root, tmp_path):
    with pytest.raises(FoldError, match=r"data.fold_group='\^\(p\[0-3\]\)_' does not match the key 'p4_s0' of .*p4_s0"):
        names(folder(pool_root, num_folds=2, fold_group=r"^(p[0-3])_"), "train")
    (pool_root / "few.txt").write_text("p0_s0 a\n")
    with pytest.raises(FoldError, match=r"few.txt has no line for the key 'p1_s0' of .*p1_s0.png \(and 16 more\)"):
        names(folder(pool_root, splits={"train": 1.0}, num_folds=2, fold_group_file="few.txt"), "val")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_folds": 1}, r"data.num_folds=1: k-fold needs at least 2 folds"),
        ({"num_folds": 3, "fold": 3}, r"data.fold=3 is outside 0..2 .*data.fold=0,1,2"),
        ({"fold": 2}, r"data.fold=2 is set but data.num_folds is null"),
        ({"num_folds": 2, "fold_group": "(", "fold_group_file": None}, r"not a regular expression"),
        ({"num_folds": 2, "fold_group": "x", "fold_group_file": "g.txt"}, r"both set"),
        ({"num_folds": 20}, r"data.num_folds=20 but the training pool holds only 18 images"),
    ],
)
def test_settings_refused(pool_root, settings, message):
    with pytest.raises(FoldError, match=message):
        names(folder(pool_root, splits={"train": 1.0}, **settings), "train")


def test_config_check_names_the_fold_keys(tmp_path):
    overrides = ["data=folder", f"data.root={tmp_path}", *THREE_CLASSES]
    cfg = compose_config("train", [*overrides, "data.num_folds=5", "data.fold=5"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.fold=5 is outside 0..4 .*python train.py -m data.fold=0,1,2,3,4"):
        validate(cfg, "train")
    cfg = compose_config("train", [*overrides, "data.num_folds=1"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.num_folds=1 is out of range \(below 2\)"):
        validate(cfg, "train")
    cfg = compose_config("train", [*overrides, "data.fold=1"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data.fold=1 but data.num_folds is null"):
        validate(cfg, "train")
    cfg = compose_config("train", [*overrides, "data.num_folds=3", "data.fold=2"], tmp_path / "run")
    assert validate(cfg, "train").data.num_folds == 3


# ------------------------------------------------------------------------------------------------ the summary


def write_job(sweep: Path, job: int, overrides: list[str], metrics: dict | None) -> None:
    (sweep / str(job) / ".hydra").mkdir(parents=True)
    (sweep / str(job) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (sweep / str(job) / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_summarize_sweep_reports_mean_and_std_over_folds(tmp_path):
    sweep = tmp_path / "sweep"
    scores = {("fcn", 0): 0.50, ("fcn", 1): 0.60, ("fcn", 2): 0.70, ("unet", 0): 0.55, ("unet", 1): 0.65}
    for job, (model, fold) in enumerate([*scores, ("unet", 2)]):
        found = scores.get((model, fold))  # unet's fold 2 never finished
        metrics = None if found is None else {"val/mIoU_best": found, "val/mDice": found + 0.1}
        write_job(sweep, job, [f"model={model}", f"data.fold={fold}", "data.num_folds=3"], metrics)
    proc = run_entry(str(ROOT / "summarize_sweep.py"), str(sweep), "--columns", "val/mDice", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    per_fold = [r for r in rows if r["job"].isdigit()]
    assert len(per_fold) == 6 and sum(r["status"] == "unfinished" for r in per_fold) == 1  # the rows of before
    summary = {(r["model"], r["job"]): r for r in rows if not r["job"].isdigit()}
    fcn, unet = [0.50, 0.60, 0.70], [0.55, 0.65]
    assert float(summary["fcn", "mean"]["val/mIoU_best"]) == pytest.approx(statistics.mean(fcn), abs=1e-4)
    assert float(summary["fcn", "std"]["val/mIoU_best"]) == pytest.approx(statistics.stdev(fcn), abs=1e-4)
    assert float(summary["fcn", "mean"]["val/mDice"]) == pytest.approx(statistics.mean(fcn) + 0.1, abs=1e-4)
    assert float(summary["unet", "std"]["val/mIoU_best"]) == pytest.approx(statistics.stdev(unet), abs=1e-4)
    assert summary["unet", "mean"]["n"] == "2" and summary["unet", "mean"]["data.fold"] == "0,1"
    assert summary["fcn", "mean"]["data.fold"] == "0,1,2" and summary["fcn", "std"]["status"] == "3 of 3 folds"
    text = (sweep / "summary.md").read_text()
    assert "## Over folds" in text
    assert "| fcn | 0,1,2 | 3 of 3 | 0.6000 ± 0.1000 | 0.7000 ± 0.1000 |" in text
    assert "| unet | 0,1 | 2 of 3 | 0.6000 ± 0.0707 | 0.7000 ± 0.0707 |" in text


def test_summary_without_folds_is_as_before(tmp_path):
    sweep = tmp_path / "sweep"
    for job, model in enumerate(["fcn", "unet"]):
        write_job(sweep, job, [f"model={model}"], {"val/mIoU_best": 0.5 + job / 10})
    assert run_entry(str(ROOT / "summarize_sweep.py"), str(sweep), cwd=tmp_path).returncode == 0
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["1", "0"] and "n" not in rows[0]
    assert "Over folds" not in (sweep / "summary.md").read_text()


def test_a_fold_job_of_a_sweep_resumes_in_place_with_its_fold(tmp_path):
    """`python train.py ckpt_path=<sweep>/<job>` continues that job in its folder, composed from its own overrides
    (segkit.runs.resume): the fold it was started with, not the default one."""
    job = tmp_path / "multiruns" / "stamp" / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- experiment=membrane_folds\n- data.fold=3\n")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    resume = plan(tmp_path / "runs", str(job))
    assert resume.in_place and resume.run == job.resolve() and resume.checkpoint == job / "checkpoints" / "last.ckpt"
    overrides = merge_repeats([*recorded_overrides(job), f"ckpt_path={job}"])
    cfg = compose_config("train", overrides, job)
    assert (cfg.data.num_folds, cfg.data.fold, cfg.data.splits.test) == (5, 3, 0.1666)
