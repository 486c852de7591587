"""flowception_ext: train and sample Flowception models (variable-length video generation by
coupled denoising and frame insertion) with packed batches and compiled kernels."""

from ._extension import build_info
from . import ops
from .packing import PackedVideos
from .model import FlowceptionConfig, FlowceptionDiT

__version__ = "0.1.0"

__all__ = ["build_info", "ops", "PackedVideos", "FlowceptionConfig", "FlowceptionDiT", "__version__"]
