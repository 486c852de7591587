"""Loading the compiled core (``flowception_ext._C``) and describing what it contains.

If the extension is missing, fails to load, or was built against another torch, importing
the package warns once and every op runs on the stock PyTorch backend
(``flowception_ext.ops.stock``; see ``flowception_ext.ops.backend``). Set
``FLOWCEPTION_DISABLE_EXTENSION=1`` to force that (useful to compare the two paths), or
``FLOWCEPTION_BACKEND=stock`` to keep the extension loaded but run the stock backend.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

_module: Any = None
_problem: str | None = None

if os.environ.get("FLOWCEPTION_DISABLE_EXTENSION", "") not in ("", "0"):
    _problem = "disabled by FLOWCEPTION_DISABLE_EXTENSION"
else:
    try:
        from . import _C as _module  # type: ignore[attr-defined]  # registers torch.ops.flowception.*
    except ImportError as exc:  # not built, or built for an incompatible torch (undefined symbols)
        _problem = f"could not import flowception_ext._C ({exc})"
    else:
        built_for = _module.build_info()["torch_version"]
        if built_for != torch.__version__:
            _problem = f"flowception_ext._C was built for torch {built_for}, but torch {torch.__version__} is running"
            _module = None

if _problem is not None:
    warnings.warn(
        f"flowception_ext: compiled kernels unavailable, using the stock PyTorch backend: {_problem}. "
        "Rebuild with `pip install --no-build-isolation .`",
        RuntimeWarning,
        stacklevel=2,
    )


def available() -> bool:
    """True when the compiled ops are loaded (the CPU's default backend; see ``ops.select_backend``)."""
    return _module is not None


def build_info() -> dict[str, Any]:
    """What this installation runs on.

    Keys: ``torch_version`` (the running torch), ``built_for_torch``, ``cpu_kernels``,
    ``cuda_kernels``, ``cuda_compile_checked`` (the CUDA kernels were compiled by nvcc in this
    build), ``cpu_capability`` (the ``at::vec`` instruction set of the CPU kernels; ``None``
    without the extension), ``cpu_bf16_gemm`` (``"amx"`` or ``"avx512_bf16"``: the bf16
    dot-product GEMMs that the bf16 attention forward runs on this CPU; ``None``: it converts to
    fp32) and ``fallback_reason`` (why the compiled ops are not loaded, or ``None``).
    """
    if _module is None:
        return {
            "torch_version": torch.__version__,
            "built_for_torch": None,
            "cpu_kernels": False,
            "cuda_kernels": False,
            "cuda_compile_checked": False,
            "cpu_capability": None,
            "cpu_bf16_gemm": None,
            "fallback_reason": _problem,
        }
    info = dict(_module.build_info())
    info["built_for_torch"] = info.pop("torch_version")
    return {"torch_version": torch.__version__, **info, "fallback_reason": None}
