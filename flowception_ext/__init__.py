"""flowception_ext: train and sample Flowception models (variable-length video generation by
coupled denoising and frame insertion) with packed batches and compiled kernels."""

from ._extension import build_info
from . import ops
from .packing import PackedVideos
from .model import FlowceptionConfig, FlowceptionDiT
from .noising import NoisingConfig, TrainingState, make_training_state
from .losses import flowception_loss
from .sampling import Context, SampleOutput, sample
from .training import TrainConfig, Trainer
from .callbacks import Callback
from .tasks import TASKS

__version__ = "0.1.0"

__all__ = [
    "build_info", "ops", "PackedVideos", "FlowceptionConfig", "FlowceptionDiT",
    "NoisingConfig", "TrainingState", "make_training_state", "flowception_loss",
    "Context", "SampleOutput", "sample", "TrainConfig", "Trainer", "Callback", "TASKS", "__version__",
]
