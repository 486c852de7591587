"""Which implementation runs an op: our compiled kernels or the stock PyTorch backend.

Two backends implement every op:

* ``"kernels"``: our compiled kernels (``torch.ops.flowception.*``). On the CPU they are the
  default whenever the extension is loaded. Our CUDA kernels are **opt-in** until a GPU has
  validated them: set ``FLOWCEPTION_CUDA_KERNELS=1`` or pass ``backend="kernels"`` to an op.
* ``"stock"``: stock PyTorch ops only (``scaled_dot_product_attention`` over each frame's
  gathered window, ``layer_norm``, indexing), vectorised over videos and free of host syncs
  inside the model. The default on CUDA and every other non-CPU device, and on the CPU when the
  extension is not loaded.

The choice is made here and nowhere else, per call, from the tensors' device. Force the stock
backend everywhere (the CPU included) with ``FLOWCEPTION_BACKEND=stock`` or, for a block of code,
``with use_backend("stock"):``; a ``backend=`` keyword of an op overrides both.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from contextvars import ContextVar
from typing import Iterator, Literal

import torch

from .. import _extension

__all__ = ["Backend", "BACKENDS", "CUDA_ATTENTION_HEAD_DIMS", "select_backend", "use_backend"]

Backend = Literal["kernels", "stock"]
BACKENDS: tuple[str, ...] = ("kernels", "stock")
# Head dims our CUDA attention kernel is instantiated for; others run on the stock backend.
CUDA_ATTENTION_HEAD_DIMS = (32, 64, 128)

_forced: ContextVar[str | None] = ContextVar("flowception_backend", default=None)
_warned: set[str] = set()


def _check_name(name: str | None, what: str) -> str | None:
    if name is None or name == "auto":
        return None
    if name not in BACKENDS:
        raise ValueError(f"{what} must be 'kernels', 'stock' or 'auto', got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(backend: str | None) -> Iterator[None]:
    """Run the ops in this block on ``backend`` (``"kernels"``, ``"stock"``, or ``None``/``"auto"``:
    the default choice), e.g. ``with use_backend("stock"): trainer.fit()``."""
    token = _forced.set(_check_name(backend, "backend"))
    try:
        yield
    finally:
        _forced.reset(token)


def _fall_back(reason: str) -> Backend:
    if reason not in _warned:  # once per reason, not once per layer
        _warned.add(reason)
        warnings.warn(f"flowception_ext: {reason}; using the stock PyTorch backend", RuntimeWarning, stacklevel=3)
    return "stock"


def select_backend(device: torch.device, backend: str | None = None, *, head_dim: int | None = None) -> Backend:
    """The backend that runs an op on ``device``.

    Args:
        device: the device of the op's tensors.
        backend: ``"kernels"``, ``"stock"`` or ``None``/``"auto"``. ``None`` takes the innermost
            :func:`use_backend`, then ``FLOWCEPTION_BACKEND``, then the device's default.
        head_dim: the attention head dim, for local frame attention (our CUDA kernel covers 32, 64
            and 128 only).

    Asking for our kernels where they cannot run (extension not loaded, CUDA kernels not built,
    an unsupported head dim, a device we have no kernel for) falls back to the stock backend
    with a warning, never an error.
    """
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    choice = _check_name(backend, "backend") or _forced.get() or _check_name(
        os.environ.get("FLOWCEPTION_BACKEND") or None, "FLOWCEPTION_BACKEND")
    if choice == "stock":
        return "stock"
    info = _extension.build_info()
    if device.type in ("cpu", "meta"):  # meta: the compiled ops' fake kernels
        if info["cpu_kernels"]:
            return "kernels"
        return _fall_back("compiled kernels requested but not loaded") if choice == "kernels" else "stock"
    if device.type == "cuda":
        opted_in = choice == "kernels" or os.environ.get("FLOWCEPTION_CUDA_KERNELS", "") not in ("", "0")
        if not opted_in:
            return "stock"
        if not info["cuda_kernels"]:
            return _fall_back("our CUDA kernels were requested but are not built")
        if head_dim is not None and head_dim not in CUDA_ATTENTION_HEAD_DIMS:
            return _fall_back(f"our CUDA attention kernel covers head dims {CUDA_ATTENTION_HEAD_DIMS}, not {head_dim}")
        return "kernels"
    return _fall_back(f"we have no kernels for {device.type} devices") if choice == "kernels" else "stock"
