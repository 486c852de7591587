"""Helpers that attach the Python side of a compiled op (fake kernel, autograd, flop formula)
only when the compiled library is loaded."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import _extension


def compiled_op(name: str) -> Any:
    """``torch.ops.flowception.<name>`` when the extension is loaded, else ``None``."""
    return getattr(torch.ops.flowception, name) if _extension.available() else None


def register(name: str, *, fake: Callable, flops: Callable[..., int], backward: Callable | None = None,
             setup_context: Callable | None = None) -> None:
    """Register the fake kernel, the flop formula and (optionally) the autograd of ``flowception::name``."""
    if not _extension.available():
        return
    qualname = f"flowception::{name}"
    torch.library.register_fake(qualname)(fake)
    if backward is not None:
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    register_flop_formula(getattr(torch.ops.flowception, name))(flops)


def draw_seed(generator: torch.Generator | None) -> int:
    """A 63-bit seed from ``generator`` (or the global generator)."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, dtype=torch.int64))
