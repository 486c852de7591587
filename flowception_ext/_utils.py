"""Small helpers shared across the package: describing a bad value, checking an int, reading a
dataclass back from JSON."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["check_int", "dataclass_from_dict", "describe"]

T = TypeVar("T")


def describe(x: Any) -> str:
    """What a value is, for error messages: a tensor's shape, else its type's name."""
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def check_int(name: str, value: Any, minimum: int) -> None:
    """``TypeError`` unless ``value`` is an int (not a bool); ``ValueError`` if it is below ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def dataclass_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """``cls(**data)``, refusing unknown fields by name (configs read back from JSON)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(names)}")
    return cls(**data)
