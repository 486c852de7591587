"""FlowceptionConfig: the hyper-parameters of the DiT backbone, with size presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .._utils import dataclass_from_dict

__all__ = ["FlowceptionConfig", "PRESETS"]



# name -> (depth, hidden_size, num_heads). "paper" is the size of the paper's video models
# (38 blocks, width 1536, 24 heads): constructible, not trained here.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(depth=4, hidden_size=96, num_heads=4),
    "small": dict(depth=8, hidden_size=256, num_heads=4),
    "base": dict(depth=12, hidden_size=512, num_heads=8),
    "large": dict(depth=24, hidden_size=1024, num_heads=16),
    "paper": dict(depth=38, hidden_size=1536, num_heads=24),
}


@dataclass
class FlowceptionConfig:
    """Hyper-parameters of :class:`FlowceptionDiT`.

    Attributes:
        in_channels: channels ``C`` of a frame (pixels or latents).
        frame_size: ``(H, W)`` of a frame; each must be divisible by ``patch_size``.
        patch_size: side ``p`` of the square patches; a frame has ``(H/p)(W/p)`` patch tokens + 1 rate token.
        depth, hidden_size, num_heads, mlp_ratio: transformer size (``hidden_size / num_heads``
            must be even and divisible into the three rotary axes).
        mlp: the blocks' feed-forward layer. ``"gelu"`` (default, as DiT): ``W₂ GELU(W₁ h)`` with
            ``mlp_ratio · hidden_size`` hidden units. ``"swiglu"`` (Shazeer 2020):
            ``W₂ (SiLU(W_g h) ⊙ W₁ h)`` with two thirds as many hidden units, so the same
            parameters and FLOPs (:attr:`mlp_hidden`). Its product of two projections computes
            products of features directly, which a GELU layer only approximates; on ToyColoring
            that is what pooling noisy frames needs (docs/experiments/recipe_study.md).
        window: attention window in frames (a frame sees frames within ``±window`` of its
            video); ``None`` = every frame of the video.
        attention: ``"bidirectional"`` (Flowception, full-sequence) or ``"causal"`` (frame-causal,
            the autoregressive baseline: a frame sees itself and the frames before it).
        num_classes: class labels for conditioning (0 = unconditional). Label ``num_classes`` is
            the null label used for guidance.
        rate_head: predict per-frame insertion log-rates (False for the baselines).
        length_conditioning: add embeddings of the video's current frame count and of each
            frame's index to the per-frame conditioning. Rotary positions are relative and
            attention averages, so without it the model must learn to count frames, which the
            insertion rates depend on (bidirectional attention only: under a KV cache the count
            changes as frames are appended).
        prediction: what the network's output layer predicts. ``"velocity"``: the velocity
            ``X¹ − ε`` itself (as the paper). ``"clean"``: the clean frame ``X̂¹``, turned into the
            velocity ``(X̂¹ − X_t) / (1 − t)`` that reaches it at ``t = 1`` inside ``forward``
            (x-prediction, Li & He 2025, "Back to Basics: Let Denoising Generative Models
            Denoise"), so the sampler and guidance are unchanged; the training loss weights the
            velocity error with :meth:`FlowceptionDiT.velocity_loss_weight`. Its effect on
            ToyColoring is measured in docs/experiments/length_modeling.md.
        clean_min_gap: with ``prediction="clean"``, the floor on ``1 − t`` in the training
            weight of the clean-frame error, ``‖X̂¹ − X¹‖² / max(1 − t, clean_min_gap)²`` (the
            velocity error is ``‖X̂¹ − X¹‖² / (1 − t)²``, unbounded as ``t → 1``).
        log_rate_clamp: clamp of the predicted log-rate, for a stable ``λ = exp(log_rate)``.
        rope_theta: base of the rotary frequencies.
        rope_frame_scale, rope_spatial_scale: multipliers on the frame index and on the patch
            row/column before the rotation (1: positions as they are). The frame axis gets the
            frequencies ``rope_frame_scale · θ^(−2k/d_frame)`` rad per frame, so a scale of 20
            (the reference code's toy setting) gives neighbouring frames distinct angles on
            more of its pairs.
        qk_norm: RMS-normalise queries and keys per head (with a learned scale) before the
            rotation, as the reference code does; stabilises attention at high learning rates.
        context_init: how the patch embedding's context channels start. ``"zero"`` (default):
            at 0, so a context frame first enters the network exactly as a clean frame at
            ``t = 1`` does, and what the network learns about reading clean neighbours applies
            to the context from the start. ``"random"``: xavier, like the frame channels (the
            default before; worse MovingShapes image-to-video samples in
            docs/experiments/recipe_study.md). Models without context train identically either way.
        rope_frame_dims: head dims given to the frame axis (even, at most the head dim; the rest
            is split between rows and columns). ``None``: the default split, a third of the head
            dim to each spatial axis (rounded down to even) and the rest to frames.
    """

    in_channels: int = 3
    frame_size: tuple[int, int] = (32, 32)
    patch_size: int = 4
    depth: int = 4
    hidden_size: int = 96
    num_heads: int = 4
    mlp_ratio: float = 4.0
    mlp: Literal["gelu", "swiglu"] = "gelu"
    window: int | None = None
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    num_classes: int = 0
    rate_head: bool = True
    length_conditioning: bool = False
    prediction: Literal["velocity", "clean"] = "velocity"
    clean_min_gap: float = 0.05
    log_rate_clamp: tuple[float, float] = (-12.0, 8.0)
    rope_theta: float = 10000.0
    rope_frame_scale: float = 1.0
    rope_spatial_scale: float = 1.0
    rope_frame_dims: int | None = None
    qk_norm: bool = False
    context_init: Literal["zero", "random"] = "zero"
    layer_norm_eps: float = 1e-6
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata saved with the model

    def __post_init__(self) -> None:
        if isinstance(self.frame_size, int):
            self.frame_size = (self.frame_size, self.frame_size)
        self.frame_size = tuple(int(s) for s in self.frame_size)  # type: ignore[assignment]
        self.log_rate_clamp = tuple(float(v) for v in self.log_rate_clamp)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("in_channels", "patch_size", "depth", "hidden_size", "num_heads"):
            positive(name)
        if len(self.frame_size) != 2 or min(self.frame_size) < 1:
            raise ValueError(f"frame_size must be (H, W) with H, W >= 1, got {self.frame_size}")
        h, w = self.frame_size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"frame_size {self.frame_size} must be divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head dim (hidden_size / num_heads = {self.head_dim}) must be even and >= 6 for 3-axis rotary embeddings")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 0):
            raise ValueError(f"window must be None or an integer >= 0, got {self.window!r}")
        if self.attention not in ("bidirectional", "causal"):
            raise ValueError(f"attention must be 'bidirectional' or 'causal', got {self.attention!r}")
        if self.length_conditioning and self.attention != "bidirectional":
            raise ValueError("length_conditioning needs attention='bidirectional' (a KV cache would go stale as the count grows)")
        if self.context_init not in ("zero", "random"):
            raise ValueError(f"context_init must be 'zero' or 'random', got {self.context_init!r}")
        if self.prediction not in ("velocity", "clean"):
            raise ValueError(f"prediction must be 'velocity' or 'clean', got {self.prediction!r}")
        if not isinstance(self.clean_min_gap, (int, float)) or not 0 < self.clean_min_gap <= 1:
            raise ValueError(f"clean_min_gap must be a number in (0, 1], got {self.clean_min_gap!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {self.num_classes!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} leaves no hidden units at hidden_size {self.hidden_size}")
        for name in ("rope_frame_scale", "rope_spatial_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        fd = self.rope_frame_dims
        if fd is not None and (not isinstance(fd, int) or isinstance(fd, bool) or fd < 0 or fd % 2
                               or fd > self.head_dim or (self.head_dim - fd) % 4):
            raise ValueError(f"rope_frame_dims must be None or an even integer in [0, head dim = {self.head_dim}] "
                             f"leaving a multiple of 4 for rows and columns, got {fd!r}")
        lo, hi = self.log_rate_clamp
        if not lo < hi:
            raise ValueError(f"log_rate_clamp must be (low, high) with low < high, got {self.log_rate_clamp}")

    # ---- derived sizes -----------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        """Hidden units of a block's feed-forward layer: ``mlp_ratio · hidden_size``, two thirds of
        that for ``mlp="swiglu"`` (whose first layer has two projections of this width)."""
        hidden = self.hidden_size * self.mlp_ratio
        return int(round(2 * hidden / 3)) if self.mlp == "swiglu" else int(hidden)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.frame_size[0] // self.patch_size, self.frame_size[1] // self.patch_size

    @property
    def patch_tokens(self) -> int:
        gh, gw = self.grid_size
        return gh * gw

    @property
    def tokens_per_frame(self) -> int:
        """Patch tokens plus the rate token."""
        return self.patch_tokens + 1

    # ---- construction / serialisation --------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "FlowceptionConfig":
        """A preset size (``tiny``, ``small``, ``base``, ``large``, ``paper``) with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowceptionConfig":
        return dataclass_from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
