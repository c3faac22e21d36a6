"""Training order and augmentation randomness as functions of (seed, epoch), so that a resumed run sees exactly
the batches, crops and flips the uninterrupted run would have seen.

torch's RandomSampler and DataLoader draw their seeds from the global random state, and albumentations keeps a
running state inside each worker: none of that can be put back after a restart. Here the sampler orders an epoch
by a permutation of (seed, epoch), and hands each draw its own augmentation seed derived from (seed, epoch,
index); nothing depends on which worker reads a sample or on what ran before. A run stopped mid-epoch resumes
by skipping the batches it had already trained on.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

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
    keeps it under DDP instead of wrapping it); `set_epoch` is called by Lightning every epoch."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            range(num_samples),
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self._skip: dict[int, int] = {}

    def skip(self, epoch: int, samples: int) -> None:
        """Leave out the first `samples` draws (of this process) of `epoch`: they were trained on before a stop."""
        self._skip[epoch] = samples

    def order(self, epoch: int) -> list[int]:
        """This process's indices for `epoch`: a permutation of (seed, epoch), padded and sharded as
        DistributedSampler does."""
        n = len(self.dataset)
        indices = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        indices = indices.tolist()
        padding = self.total_size - n
        if padding > 0:
            indices += (indices * (padding // n + 1))[:padding]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        epoch = self.epoch
        start = self._skip.pop(epoch, 0)
        for index in self.order(epoch)[start:]:
            yield SampleKey(index, draw_seed(self.seed, epoch, index))
