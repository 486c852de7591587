"""FlowceptionDiT: a DiT over packed frame tokens (docs/algorithm.md §5).

Every frame is patchified into ``L`` tokens plus one learnable **rate token** (``P = L + 1``
tokens per frame, rate token last). A per-frame conditioning vector (time embedding, plus a
class embedding) drives per-frame AdaLN in every block. Attention stays inside each video,
optionally within ``±window`` frames or frame-causal, with 3-axis rotary embeddings over
(frame position in the current sequence, row, column); the rate token sits at its frame's
centre. Heads: velocity (final AdaLN + linear + unpatchify) and log insertion rate (MLP on the
rate token). Token tensors are kept flat: ``[T, D]`` with ``T = N·P``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import ops
from ..checkpoint import atomic_directory, load_json, load_tensors, save_json, save_tensors
from ..packing import PackedVideos
from .config import FlowceptionConfig

__all__ = ["FlowceptionDiT", "KVCache"]


# ---- embeddings -------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Local time t in [0, 1] -> sinusoidal features -> MLP (as DiT, with t scaled by 1000)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: Tensor) -> Tensor:  # (N,) -> (N, D)
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = (1000.0 * t.float())[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def rope_axis_dims(head_dim: int, frame_dims: int | None = None) -> tuple[int, int, int]:
    """Split an (even) head dim over the (frame, row, column) axes, each part even: ``frame_dims``
    to frames (default: what a third per spatial axis, rounded down to even, leaves)."""
    spatial = 2 * (head_dim // 6) if frame_dims is None else (head_dim - frame_dims) // 2
    return head_dim - 2 * spatial, spatial, spatial


def rope_angles(positions: Tensor, head_dim: int, theta: float, frame_dims: int | None = None) -> Tensor:
    """Rotation angles ``[T, head_dim / 2]`` for 3-axis positions ``[T, 3]`` (float)."""
    parts = []
    for axis, dim in enumerate(rope_axis_dims(head_dim, frame_dims)):
        if dim == 0:
            continue
        freqs = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim)
        parts.append(positions[:, axis : axis + 1].double() * freqs[None])
    return torch.cat(parts, dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of ``x [T, H, d]`` by the angles behind ``cos, sin [T, 1, d/2]``."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


# ---- key/value cache for frame-causal generation ----------------------------------------------


class LayerCache:
    """Keys/values of the committed frames for one block: ``(B, H, T_past, d)``."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.pending: tuple[Tensor, Tensor] | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, tokens_per_frame: int, window: int) -> Tensor:
        """Attention of one new frame per video (``q, k, v: (B·P, H, d)``) to the cached frames
        within the window and to itself. Remembers this frame's keys/values for :meth:`commit`."""
        q, k, v = (t.unflatten(0, (-1, tokens_per_frame)).transpose(1, 2) for t in (q, k, v))  # (B, H, P, d)
        self.pending = (k, v)
        if self.k is not None and window != 0:
            past = slice(None) if window < 0 else slice(-window * tokens_per_frame, None)
            k = torch.cat([self.k[:, :, past], k], dim=2)
            v = torch.cat([self.v[:, :, past], v], dim=2)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(0, 1)  # (B·P, H, d)

    def commit(self) -> None:
        if self.pending is None:
            raise RuntimeError("nothing to commit: run the model on the frame first")
        k, v = self.pending
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.pending = None


class KVCache:
    """Key/value cache for frame-causal models (the autoregressive baseline).

    Run the model with ``cache=`` on one new frame per video: it attends to the committed
    frames and to itself. Once the frame is final, run it once more as a clean context frame
    and call :meth:`commit` to append its keys/values.
    """

    def __init__(self, depth: int) -> None:
        self.layers = [LayerCache() for _ in range(depth)]
        self.num_frames = 0

    def commit(self) -> None:
        for layer in self.layers:
            layer.commit()
        self.num_frames += 1


# ---- the transformer --------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Pre-norm transformer block with per-frame adaLN-Zero modulation."""

    def __init__(self, config: FlowceptionConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.eps = config.layer_norm_eps
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        hidden = config.mlp_hidden
        self.swiglu = config.mlp == "swiglu"
        self.fc1 = nn.Linear(d, 2 * hidden if self.swiglu else hidden)  # SwiGLU: (value, gate) projections
        self.fc2 = nn.Linear(hidden, d)
        self.ada = nn.Linear(d, 6 * d)
        head_dim = d // config.num_heads
        self.q_norm = nn.RMSNorm(head_dim, eps=config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=config.layer_norm_eps) if config.qk_norm else None

    def forward(self, x: Tensor, c: Tensor, rope: tuple[Tensor, Tensor], attn: dict,
                cache: LayerCache | None = None) -> Tensor:
        # x: (T, D) tokens; c: (F, D) per-frame conditioning
        p = attn["tokens_per_frame"]
        # Under autocast the linear layers return bf16 while the residual stream x keeps its dtype:
        # the per-frame ops take one dtype, the stream's.
        shift1, scale1, gate1, shift2, scale2, gate2 = (m.to(x.dtype).contiguous()
                                                        for m in self.ada(F.silu(c)).chunk(6, dim=-1))
        h = ops.adaln_modulate(x, shift1, scale1, p, self.eps)
        q, k, v = self.qkv(h).unflatten(-1, (3, self.num_heads, -1)).unbind(1)  # (T, H, d) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        if cache is None:
            a, _ = ops.local_frame_attention(q, k, v, attn["cu_seqlens"], p, attn["window"], causal=attn["causal"],
                                             max_frames=attn["max_frames"], return_lse=False)
            a = a.flatten(1)  # (T, D)
        else:
            a = cache.attend(q, k, v, p, attn["window"]).flatten(1)
        x, h = ops.gated_residual_adaln(x, self.proj(a).to(x.dtype), gate1, shift2, scale2, p, self.eps)
        return ops.gated_residual(x, self.feed_forward(h).to(x.dtype), gate2, p)

    def feed_forward(self, h: Tensor) -> Tensor:
        if self.swiglu:
            value, gate = self.fc1(h).chunk(2, dim=-1)
            return self.fc2(F.silu(gate) * value)
        return self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class FlowceptionDiT(nn.Module):
    """The Flowception backbone. ``forward(videos, labels=None) -> (velocity [N, C, H, W], log_rate [N])``."""

    def __init__(self, config: FlowceptionConfig) -> None:
        super().__init__()
        if not isinstance(config, FlowceptionConfig):
            raise TypeError(f"config must be a FlowceptionConfig, got {type(config).__name__}")
        self.config = config
        d, c, p = config.hidden_size, config.in_channels, config.patch_size
        self.patch_embed = nn.Linear(2 * c * p * p, d)  # noisy frame + context channel group
        self.rate_token = nn.Parameter(torch.zeros(d))
        self.t_embedder = TimestepEmbedder(d)
        self.label_embedding = nn.Embedding(config.num_classes + 1, d) if config.num_classes else None
        # integer counts k as "times" k / 1000: the sinusoid then has the usual position frequencies
        self.count_embedder = TimestepEmbedder(d) if config.length_conditioning else None
        self.index_embedder = TimestepEmbedder(d) if config.length_conditioning else None
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_ada = nn.Linear(d, 2 * d)
        self.final_linear = nn.Linear(d, c * p * p)
        self.rate_head = (nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
                          if config.rate_head else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT initialisation: xavier linears, adaLN-Zero (zero modulation, zero output layers);
        with ``config.context_init = "zero"`` the patch embedding's context channels start at 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.config.context_init == "zero":  # input features: (frame channels, context channels)
            nn.init.zeros_(self.patch_embed.weight[:, self.patch_embed.in_features // 2:])
        nn.init.normal_(self.rate_token, std=0.02)
        for embedder in (self.t_embedder, self.count_embedder, self.index_embedder):
            if embedder is not None:
                for layer in (embedder.mlp[0], embedder.mlp[2]):
                    nn.init.normal_(layer.weight, std=0.02)
        if self.label_embedding is not None:
            nn.init.normal_(self.label_embedding.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.ada.weight)
            nn.init.zeros_(block.ada.bias)
        for layer in (self.final_ada, self.final_linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        if self.rate_head is not None:
            nn.init.zeros_(self.rate_head[-1].weight)
            nn.init.zeros_(self.rate_head[-1].bias)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    # ---- forward ------------------------------------------------------------------------

    def check_inputs(self, videos: PackedVideos, labels: Tensor | None) -> None:
        cfg = self.config
        if not isinstance(videos, PackedVideos):
            raise TypeError(f"videos must be a PackedVideos, got {type(videos).__name__}")
        if videos.num_videos == 0 or videos.num_frames == 0:
            raise ValueError("videos must hold at least one frame (got an empty batch)")
        expected = (cfg.in_channels, *cfg.frame_size)
        if tuple(videos.frames.shape[1:]) != expected:
            raise ValueError(f"videos.frames must have frames of shape (C, H, W) = {expected} as configured, "
                             f"got {tuple(videos.frames.shape[1:])}")
        t = videos.times
        if bool(torch.isnan(t).any() | (t < 0).any() | (t > 1).any()):
            raise ValueError("videos.times must lie in [0, 1] (found values outside or NaN)")
        if labels is not None:
            if cfg.num_classes == 0:
                raise ValueError("labels were given but the model is unconditional (num_classes = 0)")
            if labels.dtype != torch.int64 or labels.shape != (videos.num_videos,):
                raise ValueError(f"labels must be int64 [{videos.num_videos}] (one per video), got {labels.dtype} {tuple(labels.shape)}")
            if bool((labels < 0).any() | (labels > cfg.num_classes).any()):
                raise ValueError(f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null label)")

    def token_positions(self, videos: PackedVideos, frame_offset: int = 0) -> Tensor:
        """(frame position, row, column) of every token, ``[T, 3]``; rate tokens at the frame centre.
        ``frame_offset`` shifts frame positions (frames after ``frame_offset`` cached ones)."""
        gh, gw = self.config.grid_size
        dev = videos.frames.device
        rows = torch.arange(gh, device=dev, dtype=torch.float32).repeat_interleave(gw)
        cols = torch.arange(gw, device=dev, dtype=torch.float32).repeat(gh)
        spatial = torch.stack([rows, cols], dim=-1)
        spatial = torch.cat([spatial, spatial.new_tensor([[(gh - 1) / 2, (gw - 1) / 2]])])  # (P, 2)
        frame = (videos.position + frame_offset).to(torch.float32) * self.config.rope_frame_scale
        spatial = spatial * self.config.rope_spatial_scale
        p = spatial.shape[0]
        return torch.cat([frame.repeat_interleave(p)[:, None], spatial.repeat(videos.num_frames, 1)], dim=-1)

    def conditioning(self, videos: PackedVideos, labels: Tensor | None) -> Tensor:
        """Per-frame conditioning vectors ``[N, D]``."""
        c = self.t_embedder(videos.times)
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((videos.num_videos,), self.null_label, dtype=torch.int64, device=c.device)
            c = c + self.label_embedding(labels)[videos.video_index]
        if self.count_embedder is not None:
            count = videos.lengths.to(c.device)[videos.video_index]
            c = c + self.count_embedder(count / 1000.0) + self.index_embedder(videos.position / 1000.0)
        return c

    def forward(self, videos: PackedVideos, labels: Tensor | None = None, *,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """Velocity ``[N, C, H, W]`` for every frame and log insertion rate ``[N]`` for the slot
        right of every frame (``None`` when ``config.rate_head`` is False). With
        ``config.prediction = "clean"`` the velocity is computed from the predicted clean frame.

        With ``cache`` (frame-causal models only), ``videos`` holds exactly one frame per video,
        placed after the ``cache.num_frames`` committed ones (see :class:`KVCache`).
        """
        self.check_inputs(videos, labels)
        cfg = self.config
        if cache is not None:
            if cfg.attention != "causal":
                raise ValueError("a KV cache needs a frame-causal model (config.attention = 'causal')")
            if bool((videos.lengths != 1).any()):
                raise ValueError(f"with a KV cache, videos must hold exactly one frame per video, got lengths {videos.lengths.tolist()}")
        p, (gh, gw) = cfg.patch_size, cfg.grid_size
        dtype = self.patch_embed.weight.dtype
        frames = videos.frames.to(dtype)
        context = torch.where(videos.is_context[:, None, None, None], frames, torch.zeros_like(frames))
        patches = rearrange(torch.cat([frames, context], dim=1), "n c (h p) (w q) -> n (h w) (c p q)", p=p, q=p)
        x = self.patch_embed(patches)  # (N, L, D)
        x = torch.cat([x, self.rate_token.to(dtype).expand(x.shape[0], 1, -1)], dim=1).flatten(0, 1)  # (T, D)

        c = self.conditioning(videos, labels)  # (N, D)
        offset = 0 if cache is None else cache.num_frames
        angles = rope_angles(self.token_positions(videos, offset), cfg.head_dim, cfg.rope_theta,
                             cfg.rope_frame_dims)[:, None]  # (T, 1, d/2)
        rope = (torch.cos(angles).to(dtype), torch.sin(angles).to(dtype))
        # max_frames once per forward: spares the stock attention backend a host sync per layer
        max_frames = int(videos.lengths.max()) if videos.num_videos else 0
        attn = dict(cu_seqlens=videos.cu_seqlens, tokens_per_frame=cfg.tokens_per_frame, max_frames=max_frames,
                    window=-1 if cfg.window is None else cfg.window, causal=cfg.attention == "causal")
        for i, block in enumerate(self.blocks):
            x = block(x, c, rope, attn, None if cache is None else cache.layers[i])

        shift, scale = (m.to(x.dtype).contiguous() for m in self.final_ada(F.silu(c)).chunk(2, dim=-1))
        h = ops.adaln_modulate(x, shift, scale, cfg.tokens_per_frame, cfg.layer_norm_eps)
        h = h.unflatten(0, (-1, cfg.tokens_per_frame))
        out = self.final_linear(h[:, :-1])  # (N, L, C p p): patch tokens only
        out = rearrange(out, "n (h w) (c p q) -> n c (h p) (w q)", h=gh, w=gw, p=p, q=p)
        if cfg.prediction == "clean":  # out is X̂¹: the velocity that reaches it at t = 1
            # In float32 at least: in bf16, t = 0.999 would round to 1. A frame at t = 1 does not
            # move; the clamp only keeps that unused branch finite.
            gap = (1 - videos.times.to(torch.promote_types(dtype, torch.float32)))[:, None, None, None]
            velocity = torch.where(gap > 0, (out - frames) / gap.clamp(min=1e-6), 0).to(dtype)
        else:
            velocity = out
        log_rate = None
        if self.rate_head is not None:
            rate_state = x.unflatten(0, (-1, cfg.tokens_per_frame))[:, -1]  # (N, D)
            log_rate = self.rate_head(rate_state).squeeze(-1).clamp(*cfg.log_rate_clamp)
        return velocity, log_rate

    def velocity_loss_weight(self, times: Tensor) -> Tensor | None:
        """Per-frame weight of the squared velocity error in the training loss, or ``None`` for
        equal weights (``prediction="velocity"``).

        With ``prediction="clean"`` the velocity error is ``(X̂¹ − X¹) / (1 − t)``, so its square
        weights the clean-frame error by ``1 / (1 − t)²``, unbounded as ``t → 1``; the weight
        ``min(1, (1 − t) / clean_min_gap)²`` caps that at ``1 / clean_min_gap²``. The network
        still predicts ``X̂¹`` at every ``t``, so the sampler's last steps land on it.
        """
        if self.config.prediction != "clean":
            return None
        t = times.to(torch.promote_types(times.dtype, torch.float32))
        return ((1 - t) / self.config.clean_min_gap).clamp(max=1).square()

    # ---- persistence ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` (no pickle), atomically."""
        with atomic_directory(directory) as tmp:
            save_json(tmp / "config.json", self.config.to_dict())
            save_tensors(tmp / "model.safetensors", self.state_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        weights: str = "model.safetensors") -> "FlowceptionDiT":
        """Load a model written by :meth:`save_pretrained` (or a trainer checkpoint; ``weights="ema.safetensors"``)."""
        directory = Path(directory)
        data = load_json(directory / "config.json")
        try:
            config = FlowceptionConfig.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{directory / 'config.json'} is not a valid FlowceptionConfig: {exc}") from None
        model = cls(config)
        state = load_tensors(directory / weights, device=device)
        missing, unexpected = set(model.state_dict()) - set(state), set(state) - set(model.state_dict())
        if missing or unexpected:
            raise ValueError(f"{directory / weights} does not match the config: missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{directory / weights} does not match the config: {exc}") from None
        return model.to(device)
