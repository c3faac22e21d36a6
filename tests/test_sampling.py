"""`data.sampling`: uniform (the default, unchanged) and class_balanced (repeat-factor sampling from the share of
training images holding each class, measured from the masks once and cached), both exactly resumable and sharded
across processes."""

import collections
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate

from conftest import TINY_BACKBONE, TINY_DATA, compose_config
from helpers.fake_data import folder_overrides, image_for, save
from segkit.config.checks import SAMPLINGS, ConfigError, validate
from segkit.data import datamodule as datamodule_module
from segkit.data.datamodule import SAMPLINGS as DATA_SAMPLINGS
from segkit.data.presence import ItemMasks, mask_presence, measure_presence
from segkit.data.sampling import ClassBalancedSampler, EpochSampler, SampleKey, draw_seed, repeat_factors

pytestmark = pytest.mark.usefixtures("one_thread")

# Ten masks: class 0 in every one, class 1 in five (0-4), class 2 in one (0).
NUM_IMAGES = 10
RARE = {0}


def write_dataset(root: Path, num_images: int = NUM_IMAGES) -> Path:
    rng = np.random.default_rng(0)
    for i in range(num_images):
        mask = np.zeros((24, 32), dtype=np.uint8)
        if i < 5:
            mask[2:10, 2:12] = 1
        if i in RARE:
            mask[12:20, 16:28] = 2
        save(root / "masks" / f"{i:02d}.png", mask)
        save(root / "images" / f"{i:02d}.png", image_for(mask, rng))
    return root


def folder_data(root: Path, tmp: Path, *extra: str):
    """The folder datamodule of `root` as train.py builds it, with every pair in its train split (set up alone)."""
    args = folder_overrides(root, "data.crop_size=[16,16]", "data.batch_size=2", f"paths.log_dir={tmp}/logs", *extra)
    cfg = compose_config("train", args, tmp)
    datamodule = instantiate(cfg.data)
    datamodule.datasets["train"] = datamodule.make_dataset("train")
    return datamodule


def names_of(datamodule, epoch: int) -> list[str]:
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [name for batch in loader for name in batch["name"]]


@pytest.fixture
def data_root(tmp_path):
    return write_dataset(tmp_path / "data")


def test_mask_presence_takes_class_ids_and_one_channel_per_class():
    ids = np.array([[0, 0, 255], [3, 3, 255]])  # (H, W) with ignore_index; class 3 of 4 present, 1 and 2 not
    assert mask_presence(ids, 4).tolist() == [True, False, False, True]
    assert mask_presence(torch.from_numpy(ids), 4).tolist() == [True, False, False, True]
    multilabel = np.zeros((3, 2, 2), dtype=np.uint8)  # (C, H, W): 0/1 per class, 255 unknown
    multilabel[0, 0, 0] = 1
    multilabel[1] = 255  # class 1 unknown everywhere: not present
    multilabel[2, 1, 1] = 1
    multilabel[0, 1, 1] = 1  # a pixel with two labels
    assert mask_presence(multilabel, 3).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="expected"):
        mask_presence(np.zeros((2, 4, 4)), 3)  # neither (H, W) nor (3, H, W)

    # Measured over a dataset of multi-label masks, as a multi-label datamodule's items would give them.
    masks = [multilabel, np.stack([np.ones((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))])]
    presence = measure_presence(masks, 3)
    assert presence.tolist() == [[True, False, True], [True, False, False]]
    assert repeat_factors(presence, threshold=1.0).image_factor.tolist() == [math.sqrt(2), 1.0]


def test_weights_match_a_hand_computation(data_root, tmp_path):
    """f = (1, 0.5, 0.1) with threshold 0.5: r = (1, 1, sqrt(5)); the image with class 2 weighs sqrt(5), the rest 1.
    Read from the mask files alone, the training split listed twice (`repeat`) weighs each image once per listing."""
    data = folder_data(data_root, tmp_path / "run", "data.sampling=class_balanced", "data.sampling_threshold=0.5")
    presence, source = data.class_presence()
    assert source.startswith("measured")
    assert presence.sum(axis=0).tolist() == [10, 5, 1]
    factors = repeat_factors(presence, 0.5)
    assert factors.class_frequency.tolist() == [1.0, 0.5, 0.1]
    np.testing.assert_allclose(factors.class_factor, [1.0, 1.0, math.sqrt(5)])
    expected = [math.sqrt(5) if i in RARE else 1.0 for i in range(NUM_IMAGES)]
    np.testing.assert_allclose(data.sampling_weights(), expected)

    twice = folder_data(data_root, tmp_path / "run2", "data.sampling=class_balanced", "data.sampling_threshold=0.5",
                        "data.repeat=2")  # fmt: skip
    np.testing.assert_allclose(twice.sampling_weights(), expected * 2)
    # A threshold below every class's share repeats nothing: every image once an epoch.
    flat = folder_data(data_root, tmp_path / "run3", "data.sampling=class_balanced", "data.sampling_threshold=0.05")
    assert sorted(names_of(flat, 0)) == sorted(f"{i:02d}" for i in range(NUM_IMAGES))


def test_rare_class_images_are_drawn_more_often_over_epochs(data_root, tmp_path):
    balanced = folder_data(data_root, tmp_path / "b", "data.sampling=class_balanced", "data.sampling_threshold=0.5")
    uniform = folder_data(data_root, tmp_path / "u")
    epochs = range(20)
    counts = {}
    for name, data in (("uniform", uniform), ("class_balanced", balanced)):
        sampler = data.train_dataloader().sampler
        orders = [sampler.order(epoch) for epoch in epochs]
        assert all(len(order) == NUM_IMAGES for order in orders)  # an epoch keeps the split's size
        counts[name] = collections.Counter(index for order in orders for index in order)
    rare = next(iter(RARE))
    assert counts["uniform"] == {i: 20 for i in range(NUM_IMAGES)}
    # Expected 10 x sqrt(5) / (9 + sqrt(5)) = 1.99 draws an epoch; systematic resampling gives 1 or 2, never 0.
    assert 38 <= counts["class_balanced"][rare] <= 40
    assert sum(counts["class_balanced"].values()) == 20 * NUM_IMAGES
    # The loader draws what the sampler says: the rare image's name in the epoch's batches, with each repeat
    # augmented differently (its own seed).
    loader = balanced.train_dataloader()
    loader.sampler.set_epoch(3)
    seen = [(name, image) for batch in loader for name, image in zip(batch["name"], batch["image"])]
    rare_crops = [image for name, image in seen if name == f"{rare:02d}"]
    assert len(rare_crops) == loader.sampler.order(3).count(rare) == 2
    assert not torch.equal(rare_crops[0], rare_crops[1])


def test_draws_are_a_function_of_seed_and_epoch():
    weights = [1.0] * 20 + [4.0] * 5
    first, again = ClassBalancedSampler(weights, seed=7), ClassBalancedSampler(weights, seed=7)
    for epoch in (0, 5):
        first.set_epoch(epoch)
        again.set_epoch(epoch)
        assert list(first) == list(again)  # indices and augmentation seeds
    assert first.order(0) != first.order(1)
    assert ClassBalancedSampler(weights, seed=8).order(0) != first.order(0)
    first.set_epoch(2)
    keys = list(first)
    # A sample drawn twice gets two augmentation seeds; its first draw the seed uniform sampling would give it.
    repeated = next(i for i, n in collections.Counter(k.index for k in keys).items() if n > 1)
    seeds = [k.seed for k in keys if k.index == repeated]
    assert len(set(seeds)) == len(seeds) and draw_seed(7, 2, repeated) in seeds
    # Each sample drawn the floor or the ceiling of its expected count, every epoch.
    expected = ClassBalancedSampler(weights, seed=7).expected()
    for epoch in range(10):
        count = collections.Counter(first.order(epoch))
        assert all(math.floor(e) <= count[i] <= math.ceil(e) for i, e in enumerate(expected))


def test_ddp_shards_are_disjoint_and_together_the_single_process_draws():
    weights = [1.0] * 8 + [3.0] * 3  # 11 draws: 2 processes pad one
    single = ClassBalancedSampler(weights, seed=3)
    shards = [ClassBalancedSampler(weights, seed=3, num_replicas=2, rank=rank) for rank in (0, 1)]
    for sampler in (single, *shards):
        sampler.set_epoch(4)
    keys = list(single)
    ranks = [list(s) for s in shards]
    assert [len(r) for r in ranks] == [6, 6]
    # The positions of the epoch's draws are dealt out: rank r gets positions r, r + 2, ...; nothing is drawn twice
    # for two processes except the one padding draw, which repeats the epoch's first.
    assert ranks[0] == keys[0::2] and ranks[1] == keys[1::2] + [keys[0]]
    # Augmentation seeds do not depend on the number of processes.
    assert set(ranks[0] + ranks[1]) == set(keys)
    uniform = [EpochSampler(11, seed=3, num_replicas=2, rank=rank) for rank in (0, 1)]
    assert sorted(uniform[0].order(4) + uniform[1].order(4)[:-1]) == list(range(11))


def test_uniform_is_unchanged():
    """The default, and today's order and seeds: a permutation of (seed, epoch), padded and dealt out as
    DistributedSampler does, each draw's augmentation seed from (seed, epoch, index)."""
    cfg = compose_config("train", list(TINY_DATA), Path("unused"))
    assert cfg.data.sampling == "uniform" and cfg.data.sampling_threshold == 0.1
    data = instantiate(cfg.data)
    data.setup("fit")
    sampler = data.train_dataloader().sampler
    assert type(sampler) is EpochSampler
    assert EpochSampler(10, seed=3).order(0) == [9, 6, 0, 2, 1, 4, 7, 5, 3, 8]  # as before class_balanced existed
    for rank in range(3):
        sampler = EpochSampler(10, seed=3, num_replicas=3, rank=rank)
        sampler.set_epoch(1)
        sampler.skip(1, 1)
        order = np.random.default_rng([3, 1]).permutation(10).tolist()
        order += order[:2]
        assert list(sampler) == [SampleKey(i, draw_seed(3, 1, i)) for i in order[rank::3][1:]]


def test_class_presence_is_cached_reused_and_measured_again_when_files_change(data_root, tmp_path, monkeypatch):
    args = ("data.sampling=class_balanced", "data.sampling_threshold=0.5")
    first = folder_data(data_root, tmp_path / "r1", *args)
    _, source = first.class_presence()
    (cache,) = (tmp_path / "r1" / "logs" / "cache").glob("class_presence-*.json")  # under paths.log_dir
    assert str(cache) in source
    record = json.loads(cache.read_text())
    assert record["images_per_class"] == [10, 5, 1] and record["split"] == "train"

    measured = []
    real = datamodule_module.measure_presence
    monkeypatch.setattr(datamodule_module, "measure_presence", lambda *a: measured.append(1) or real(*a))
    again = folder_data(data_root, tmp_path / "r1", *args)
    presence, source = again.class_presence()
    assert measured == [] and source == f"read from {cache}" and presence.sum(axis=0).tolist() == [10, 5, 1]

    # A mask that changes (here: gains the rare class) is measured again, into a new cache file.
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[0:4, 0:4] = 2
    save(data_root / "masks" / "09.png", mask)
    changed = folder_data(data_root, tmp_path / "r1", *args)
    presence, source = changed.class_presence()
    assert measured == [1] and source.startswith("measured")
    assert presence.sum(axis=0).tolist() == [10, 5, 2]
    assert len(list(cache.parent.glob("class_presence-*.json"))) == 2
    # Another mask encoding is another cache entry; so is a cache cut short.
    other = folder_data(data_root, tmp_path / "r1", *args, "data.mask_encoding=values", "data.mask_values=[0,1,2]")
    other.class_presence()
    assert measured == [1, 1]
    for path in cache.parent.glob("class_presence-*.json"):
        path.write_text(path.read_text()[:50])
    changed.class_presence()
    assert measured == [1, 1, 1]


def test_class_balanced_resumes_exactly_mid_epoch(data_root, tmp_path):
    """A stop after the first batch of epoch 1: the resumed loader gives the rest of that epoch's batches, the same
    samples with the same crops, and the next epoch as the uninterrupted run."""
    args = ("data.sampling=class_balanced", "data.sampling_threshold=0.5")
    run = folder_data(data_root, tmp_path / "a", *args)
    loader = run.train_dataloader()
    epochs = {}
    for epoch in (1, 2):
        loader.sampler.set_epoch(epoch)
        epochs[epoch] = list(loader)

    resumed = folder_data(data_root, tmp_path / "b", *args)
    resumed.load_state_dict({"sampling_seed": run.sampling_seed, "resume_at": [1, 1]})
    loader = resumed.train_dataloader()
    rest = list(loader)  # Lightning sets the epoch after this first iterator: the datamodule has set it already
    loader.sampler.set_epoch(2)
    following = list(loader)
    for got, want in zip(rest + following, epochs[1][1:] + epochs[2], strict=True):
        assert got["name"] == want["name"]
        assert torch.equal(got["image"], want["image"]) and torch.equal(got["mask"], want["mask"])


@pytest.mark.slow
def test_a_class_balanced_run_stopped_mid_epoch_resumes_exactly(data_root, tmp_path):
    """The whole run: SIGTERM in the middle of its one epoch, then resumed: the metrics history of the uninterrupted
    run, step for step and value for value (CPU, fp32)."""
    from segkit.tasks.train import train

    args = [
        *folder_overrides(data_root, "data.crop_size=[16,16]", "data.batch_size=2", "data.eval_batch_size=2"),
        "data.splits={train:0.8,val:0.2}",
        "data.sampling=class_balanced",
        "data.sampling_threshold=0.5",
        f"paths.log_dir={tmp_path}/logs",
        "model=fcn",
        TINY_BACKBONE,
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        "test=false",
        "trainer.accelerator=cpu",
        "trusted_modules=[helpers.interrupt]",
    ]
    train(compose_config("train", args, tmp_path / "whole"))
    kill = ["+callbacks.interrupt._target_=helpers.interrupt.KillAtStep", "+callbacks.interrupt.step=2",
            f"+callbacks.interrupt.signum={int(signal.SIGTERM)}"]  # fmt: skip
    run = tmp_path / "stopped"
    (run / ".hydra").mkdir(parents=True)  # what Hydra records at a run's start: a run `ckpt_path=<run>` continues
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(args))
    with pytest.raises(SystemExit):
        train(compose_config("train", args + kill, run))
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (0, 2)  # 4 steps an epoch: stopped in its middle
    train(compose_config("train", args + [f"ckpt_path={run}"], run))
    whole = (tmp_path / "whole" / "csv" / "metrics.csv").read_text()
    assert (run / "csv" / "metrics.csv").read_text() == whole
    assert whole.count("train/loss_step") == 1 and len(whole.splitlines()) >= 5  # a row a step, and the epoch's


def test_the_synthetic_data_is_measured_from_its_drawn_masks(tmp_path):
    cfg = compose_config(
        "train",
        [*TINY_DATA, "data.num_train=64", "experiment=synthetic_class_balanced"],
        tmp_path,
    )
    data = instantiate(cfg.data)
    data.setup("fit")
    presence, source = data.class_presence()
    assert source.startswith("measured") and "cached" not in source  # drawn, not cached
    train = data.datasets["train"]
    assert presence.tolist() == [mask_presence(train[i]["mask"], 4).tolist() for i in range(64)]
    assert presence[:, 3].mean() < 0.2 < presence[:, 2].mean()  # triangles rare (30 : 10 : 1)
    weights = data.sampling_weights()
    assert (weights[presence[:, 3]] > 1).all() and (weights[~presence[:, 3]] < weights[presence[:, 3]].min()).all()
    assert isinstance(data.train_dataloader().sampler, ClassBalancedSampler)
    assert measure_presence(ItemMasks(train), 4).tolist() == presence.tolist()


def test_sampling_settings_are_checked(tmp_path):
    assert SAMPLINGS == DATA_SAMPLINGS  # the config check's copy
    cfg = compose_config("train", ["data.sampling=balanced", "data.sampling_threshold=0"], tmp_path)
    with pytest.raises(ConfigError) as error:
        validate(cfg, "train")
    assert "data.sampling='balanced'" in str(error.value) and "uniform or class_balanced" in str(error.value)
    assert "data.sampling_threshold=0" in str(error.value)
