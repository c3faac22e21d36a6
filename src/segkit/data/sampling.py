"""Training order and augmentation randomness as functions of (seed, epoch), so that a resumed run sees exactly
the batches, crops and flips the uninterrupted run would have seen.

torch's RandomSampler and DataLoader draw their seeds from the global random state, and albumentations keeps a
running state inside each worker: none of that can be put back after a restart. Here the sampler orders an epoch
by a permutation of (seed, epoch), and hands each draw its own augmentation seed derived from (seed, epoch,
index); nothing depends on which worker reads a sample or on what ran before. A run stopped mid-epoch resumes
by skipping the batches it had already trained on.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: which sample, and the seed of its augmentation in this epoch."""

    index: int
    seed: int


def split_key(key: int | SampleKey) -> tuple[int, int | None]:
    """(index, augmentation seed); a plain index (browsing, scanning, a user's own loader) has no seed."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


def draw_seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


class EpochSampler(DistributedSampler):
    """Shuffles by (seed, epoch) and shards across processes like DistributedSampler (which it is, so Lightning
    keeps it under DDP instead of wrapping it); `set_epoch` is called by Lightning every epoch. `num_replicas` and
    `rank` default to the process group's (one process without one)."""

    def __init__(
        self,
        num_samples: int,
        seed: int,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            range(num_samples),
            num_replicas=num_replicas if num_replicas is not None else dist.get_world_size() if distributed else 1,
            rank=rank if rank is not None else dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self._skip: dict[int, int] = {}

    def skip(self, epoch: int, samples: int) -> None:
        """Leave out the first `samples` draws (of this process) of `epoch`: they were trained on before a stop."""
        self._skip[epoch] = samples

    def draws(self, epoch: int) -> list[int]:
        """Every process's indices of `epoch` together, before padding and sharding: a permutation of
        (seed, epoch)."""
        n = len(self.dataset)
        return (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)).tolist()

    def shard(self, epoch: int) -> list[tuple[int, int]]:
        """This process's (index, occurrence) pairs of `epoch`, padded and sharded as DistributedSampler does;
        occurrence counts the earlier draws of the same index in the epoch (before padding), so that a sample drawn
        twice gets two augmentation seeds whatever the number of processes."""
        indices = self.draws(epoch)
        seen: dict[int, int] = {}
        pairs = []
        for index in indices:
            pairs.append((index, seen.get(index, 0)))
            seen[index] = pairs[-1][1] + 1
        padding = self.total_size - len(pairs)
        if padding > 0:
            pairs += (pairs * (padding // len(pairs) + 1))[:padding]
        return pairs[self.rank : self.total_size : self.num_replicas]

    def order(self, epoch: int) -> list[int]:
        """This process's indices for `epoch`."""
        return [index for index, _ in self.shard(epoch)]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        start = self._skip.pop(epoch, 0)
        for index, occurrence in self.shard(epoch)[start:]:
            # A first draw's seed is (seed, epoch, index), as ever; a repeat's adds its occurrence.
            extra = (occurrence,) if occurrence else ()
            yield SampleKey(index, draw_seed(self.seed, epoch, index, *extra))


class ClassBalancedSampler(EpochSampler):
    """`data.sampling=class_balanced`: images holding rare classes drawn more often, with replacement, as exactly
    resumable as `EpochSampler` (the draws are a function of (seed, epoch)) and sharded like it.

    Each epoch has as many draws as there are weights (the training split, `repeat` included), so epoch length,
    schedules and checkpoint cadence are those of uniform sampling. Image i is expected `n w_i / sum(w)` times an
    epoch; systematic resampling (one random offset, the images in a random order of (seed, epoch)) draws it the
    floor or the ceiling of that, never more or fewer, and the draws are then shuffled. Equal weights draw every
    image once.

    Args:
        weights: one non-negative weight per sample (its repeat factor, `repeat_factors`), not all zero.
        seed: the run's sampling seed.
        num_replicas: processes to shard between (default: the process group's).
        rank: this process's rank (default: the process group's).

    Example:
        >>> from segkit.data.sampling import ClassBalancedSampler
        >>> sampler = ClassBalancedSampler([1.0, 1.0, 1.0, 3.0], seed=0)
        >>> sampler.set_epoch(0)
        >>> sorted(sampler.order(0))  # 4 draws, the heavy image 4 x 3/6 = 2 times
        [0, 2, 3, 3]
    """

    def __init__(
        self, weights: Sequence[float], seed: int, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("ClassBalancedSampler needs one non-negative weight per sample, not all zero.")
        super().__init__(len(weights), seed, shuffle=True, num_replicas=num_replicas, rank=rank)
        self.weights = weights

    def expected(self) -> np.ndarray:
        """How many times each sample is drawn an epoch, on average."""
        return len(self.weights) * self.weights / self.weights.sum()

    def draws(self, epoch: int) -> list[int]:
        n = len(self.weights)
        rng = np.random.default_rng([self.seed, epoch])
        visit = rng.permutation(n)
        bounds = np.cumsum(self.expected()[visit])
        points = rng.random() + np.arange(n)
        picks = visit[np.minimum(np.searchsorted(bounds, points, side="right"), n - 1)]
        rng.shuffle(picks)
        return picks.tolist()


class RepeatFactors(NamedTuple):
    """What `repeat_factors` measured: per class its image frequency f_c and repeat factor r_c, per image r_i."""

    class_frequency: np.ndarray  # (C,) share of the images holding the class
    class_factor: np.ndarray  # (C,) max(1, sqrt(t / f_c)); 1 for a class no image holds
    image_factor: np.ndarray  # (N,) the largest factor among the image's classes; 1 for an image without a class


def repeat_factors(presence: np.ndarray, threshold: float) -> RepeatFactors:
    """Repeat-factor sampling (LVIS, Gupta et al. 2019; Detectron2's RepeatFactorTrainingSampler): a class in a share
    f_c of the images gets r_c = max(1, sqrt(threshold / f_c)), an image the largest r_c of the classes it holds.

    Args:
        presence: (images, classes) booleans, true where the image holds the class.
        threshold: classes in fewer than this share of the images are repeated.

    Example:
        >>> import numpy as np
        >>> presence = np.array([[1, 0], [1, 0], [1, 0], [1, 1]], dtype=bool)
        >>> factors = repeat_factors(presence, threshold=1.0)
        >>> factors.class_frequency.tolist(), factors.class_factor.tolist(), factors.image_factor.tolist()
        ([1.0, 0.25], [1.0, 2.0], [1.0, 1.0, 1.0, 2.0])
    """
    if threshold <= 0:
        raise ValueError(f"data.sampling_threshold must be > 0, got {threshold}.")
    presence = np.asarray(presence, dtype=bool)
    frequency = presence.mean(axis=0) if len(presence) else np.zeros(presence.shape[1])
    factor = np.ones_like(frequency)
    held = frequency > 0
    factor[held] = np.maximum(1.0, np.sqrt(threshold / frequency[held]))
    image = np.where(presence, factor[None, :], 1.0).max(axis=1) if presence.shape[1] else np.ones(len(presence))
    return RepeatFactors(frequency, factor, image)
