"""What the Trainer's DataLoader runs on: the micro-batches of its samplers in the order the steps
consume them, items keyed so the trainer can check what arrives, and their collation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..packing import PackedVideos
from .base import collate_videos
from .sampler import FrameBudgetBatchSampler

__all__ = ["KeyedItems", "MicroBatches", "collate_keyed"]


class MicroBatches:
    """The DataLoader's batch sampler: the micro-batches of the accumulation slots in the order
    the steps consume them (slot ``first``, ..., ``A - 1``, then ``0 .. A - 1`` every step),
    without end; items of a VideoDataset are keyed ``(index, epoch)``."""

    def __init__(self, samplers: list[FrameBudgetBatchSampler], keyed: bool, first: int = 0) -> None:
        self.samplers, self.keyed, self.first = samplers, keyed, first

    def __iter__(self):
        streams = [s.endless() for s in self.samplers]
        a = self.first
        while True:
            epoch, batch = next(streams[a])
            yield [(i, epoch) for i in batch] if self.keyed else list(batch)
            a = (a + 1) % len(streams)


class KeyedItems(torch.utils.data.Dataset):
    """``dataset[key]`` together with its key, so the trainer can check what the loader brings."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return key, self.dataset[key]


def collate_keyed(pairs: list) -> tuple[list, PackedVideos, Tensor | None]:
    """``(keys, packed videos, labels or None)`` from ``(key, item)`` pairs; an item is a video
    or a ``(video, label)`` pair."""
    keys = [key for key, _ in pairs]
    items = [item for _, item in pairs]
    labels = None
    if items and isinstance(items[0], tuple):
        labels = torch.tensor([int(item[1]) for item in items], dtype=torch.int64)
        items = [item[0] for item in items]
    return keys, collate_videos(items), labels
