"""The DiT backbone of Flowception (and of the baselines)."""

from .config import PRESETS, FlowceptionConfig
from .dit import FlowceptionDiT, KVCache

__all__ = ["FlowceptionConfig", "FlowceptionDiT", "PRESETS", "KVCache"]
