"""FrameBudgetBatchSampler: batches of whole videos bounded by a total frame count.

Packed batches cost what their frames cost, so batches are filled up to a frame budget
rather than to a fixed number of videos.
"""

from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["FrameBudgetBatchSampler"]


class FrameBudgetBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices whose lengths sum to at most ``max_frames_per_batch``.

    Each epoch, all indices are taken in a seeded random order (``(seed, epoch)``; in index order
    with ``shuffle=False``) and cut greedily into batches: a batch is closed when the next video
    would overflow the budget. The resulting global list of batches is the same on every rank;
    rank ``r`` of ``world_size`` gets batches ``r, r + world_size, r + 2 world_size, ...``, so at
    step ``k`` the ranks together hold global batches ``k world_size .. k world_size + world_size - 1``
    (what one process gets with ``world_size``-step gradient accumulation). Every rank gets the
    same number of batches: with ``drop_last`` the tail that does not fill a round is dropped,
    otherwise the round is completed by repeating the epoch's first batches (so with
    ``world_size = 1`` or a full last round, every index appears exactly once per epoch).

    Position and resuming: iterating yields the rest of the current epoch from the current
    position, then moves to the next epoch (``set_epoch`` also selects one). ``state_dict()``
    is a small JSON-able dict (epoch, batches already yielded on this rank in this epoch, and a
    fingerprint of lengths/budget/seed/world size); ``load_state_dict`` restores it so the next
    iteration continues exactly where that one stopped. The position counts batches handed out:
    a DataLoader with workers prefetches ahead of the training loop, so a trainer using one should
    store the number of batches it consumed instead (``state_dict(position=k)``).

    Args:
        lengths: frames of each dataset item.
        max_frames_per_batch: the frame budget; every single video must fit in it.
        shuffle: shuffle the order of videos every epoch.
        seed: shuffling seed (the same on every rank).
        drop_last: drop the batches that do not fill a last round over the ranks.
        rank, world_size: this process's shard (DistributedDataParallel).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames_per_batch: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.lengths.ndim != 1 or len(self.lengths) == 0:
            raise ValueError(f"lengths must be a non-empty list of frame counts, got {len(self.lengths)} items")
        if max_frames_per_batch < 1:
            raise ValueError(f"max_frames_per_batch must be >= 1, got {max_frames_per_batch}")
        if (self.lengths < 1).any():
            i = int(np.argmax(self.lengths < 1))
            raise ValueError(f"lengths[{i}] = {self.lengths[i]}: every video needs at least one frame")
        if (self.lengths > max_frames_per_batch).any():
            i = int(np.argmax(self.lengths > max_frames_per_batch))
            raise ValueError(f"item {i} has {self.lengths[i]} frames, more than max_frames_per_batch="
                             f"{max_frames_per_batch}; raise the budget or shorten the video")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.max_frames = int(max_frames_per_batch)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # ---- epochs ------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its shuffle); a new epoch starts at its first batch."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch (default: the current one) before sharding over ranks."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed & (2**64 - 1), epoch]).permutation(len(self.lengths))
            else:
                order = np.arange(len(self.lengths))
            batches, batch, frames = [], [], 0
            for i in order.tolist():
                if frames + self.lengths[i] > self.max_frames:
                    batches.append(batch)
                    batch, frames = [], 0
                batch.append(i)
                frames += int(self.lengths[i])
            batches.append(batch)
            self._cache = (epoch, batches)
        return self._cache[1]

    def _rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        per_rank = len(batches) // self.world_size if self.drop_last else -(-len(batches) // self.world_size)
        total = per_rank * self.world_size
        padded = (batches * (total // len(batches) + 1))[:total] if total else []
        return padded[self.rank::self.world_size]

    def __len__(self) -> int:
        """Batches this rank yields in the whole current epoch (varies a little with the shuffle)."""
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]
        self.epoch, self.position = self.epoch + 1, 0

    def endless(self) -> Iterator[tuple[int, list[int]]]:
        """``(epoch, batch)`` pairs without end: the rest of the current epoch, then the next
        epochs in turn (what a training loop that counts steps, not epochs, consumes)."""
        while True:
            epoch = self.epoch
            if self.position == 0 and len(self) == 0:
                raise ValueError(f"epoch {epoch} has no batches for rank {self.rank} of {self.world_size} "
                                 "(drop_last with fewer batches than ranks)")
            for batch in self:
                yield epoch, batch

    # ---- resuming ----------------------------------------------------------------------

    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.lengths.tobytes())
        h.update(repr((self.max_frames, self.shuffle, self.seed, self.drop_last, self.world_size)).encode())
        return h.hexdigest()[:16]

    def state_dict(self, position: int | None = None) -> dict:
        """``{"epoch", "position", "fingerprint"}`` (JSON-able); ``position`` overrides the count
        of batches handed out (e.g. the batches a trainer actually consumed)."""
        return {"epoch": self.epoch, "position": self.position if position is None else int(position),
                "fingerprint": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (from :meth:`state_dict` of a sampler with the same lengths,
        budget, seed, shuffle, drop_last and world size)."""
        if state.get("fingerprint") != self._fingerprint():
            raise ValueError("sampler state was saved with other lengths, budget, seed, shuffle, drop_last or "
                             "world size; it cannot be resumed exactly")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position <= len(self):
            raise ValueError(f"sampler state position {self.position} outside the epoch's {len(self)} batches")
