"""Insertion schedulers κ and global-time distributions (docs/algorithm.md §2, §3).

``κ(t)`` is the probability that a non-starting frame is already present at global time ``t``;
its hazard ``ρ(t) = κ'(t) / (1 - κ(t))`` drives insertions in the sampler and ``κ⁻¹`` draws
insertion times in training. Every scheduler works on tensors (any float dtype) and floats.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

__all__ = [
    "KappaScheduler",
    "LinearKappa",
    "PolynomialKappa",
    "CosineKappa",
    "EarlyKappa",
    "kappa_from_name",
    "TimeDistribution",
    "LogitNormalTime",
    "UniformTime",
    "time_distribution_from_name",
]

TensorOrFloat = Union[Tensor, float]


def _as_tensor(t: TensorOrFloat) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


def _like_input(result: Tensor, t: TensorOrFloat) -> TensorOrFloat:
    return result if isinstance(t, Tensor) else float(result)


class KappaScheduler(ABC):
    """A monotone map ``κ: [0, 1] → [0, 1]`` with ``κ(0) = 0`` and ``κ(1) = 1``."""

    name: str

    @abstractmethod
    def _kappa(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _derivative(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _inverse(self, u: Tensor) -> Tensor: ...

    def kappa(self, t: TensorOrFloat) -> TensorOrFloat:
        """κ(t), with t clamped to [0, 1]."""
        x = _as_tensor(t)
        return _like_input(self._kappa(x.clamp(0, 1)), t)

    def hazard(self, t: TensorOrFloat) -> TensorOrFloat:
        """ρ(t) = κ'(t) / (1 − κ(t)) for t in [0, 1), and 0 for t ≥ 1."""
        x = _as_tensor(t)
        inside = x < 1
        xc = torch.where(inside, x.clamp(0, 1), torch.zeros_like(x))
        rho = self._hazard(xc)
        return _like_input(torch.where(inside, rho, torch.zeros_like(rho)), t)

    def _hazard(self, t: Tensor) -> Tensor:
        """ρ on [0, 1); a subclass with a closed form overrides it (1 − κ can round to 0 first)."""
        return self._derivative(t) / (1 - self._kappa(t))

    def inverse(self, u: TensorOrFloat) -> TensorOrFloat:
        """κ⁻¹(u) for u in [0, 1]: insertion times are drawn as κ⁻¹(U(0, 1))."""
        x = _as_tensor(u)
        return _like_input(self._inverse(x.clamp(0, 1)), u)

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class LinearKappa(KappaScheduler):
    """κ(t) = t, ρ(t) = 1 / (1 − t), κ⁻¹(u) = u (the paper's default)."""

    name = "linear"

    def _kappa(self, t: Tensor) -> Tensor:
        return t

    def _derivative(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _inverse(self, u: Tensor) -> Tensor:
        return u


@dataclass(frozen=True)
class PolynomialKappa(KappaScheduler):
    """κ(t) = t^p (p > 0): p > 1 inserts late, p < 1 early."""

    power: float = 2.0
    name = "polynomial"

    def __post_init__(self) -> None:
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    def _kappa(self, t: Tensor) -> Tensor:
        return t**self.power

    def _derivative(self, t: Tensor) -> Tensor:
        return self.power * t ** (self.power - 1)

    def _inverse(self, u: Tensor) -> Tensor:
        return u ** (1.0 / self.power)

    def to_dict(self) -> dict:
        return {"name": self.name, "power": self.power}


@dataclass(frozen=True)
class CosineKappa(KappaScheduler):
    """κ(t) = 1 − cos(πt/2): slow start, fast finish."""

    name = "cosine"

    def _kappa(self, t: Tensor) -> Tensor:
        return 1 - torch.cos(0.5 * math.pi * t)

    def _derivative(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def _inverse(self, u: Tensor) -> Tensor:
        return torch.acos(1 - u) * (2 / math.pi)


@dataclass(frozen=True)
class EarlyKappa(KappaScheduler):
    """κ(t) = 1 − (1 − t)^p (p ≥ 1): insertions early, with the finite hazard ρ(t) = p / (1 − t),
    p times the linear one. (``PolynomialKappa`` with p < 1 inserts early too, but its hazard
    is infinite at t = 0, which the sampler cannot step.) A frame is inserted by
    t = 1 − 2^(−1/p) with probability 1/2: 0.13 for p = 5."""

    power: float = 5.0
    name = "early"

    def __post_init__(self) -> None:
        if not self.power >= 1:
            raise ValueError(f"power must be >= 1, got {self.power}")

    def _kappa(self, t: Tensor) -> Tensor:
        return 1 - (1 - t) ** self.power

    def _derivative(self, t: Tensor) -> Tensor:
        return self.power * (1 - t) ** (self.power - 1)

    def _hazard(self, t: Tensor) -> Tensor:
        return self.power / (1 - t)

    def _inverse(self, u: Tensor) -> Tensor:
        return 1 - (1 - u) ** (1.0 / self.power)

    def to_dict(self) -> dict:
        return {"name": self.name, "power": self.power}


def _from_spec(spec, base: type, classes: dict[str, type], what: str):
    """An instance of ``base`` from an instance, a name, or a ``to_dict()`` dict."""
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TypeError(f"{what} must be a {base.__name__}, a name or a dict with 'name', got {spec!r}")
    if spec["name"] not in classes:
        raise ValueError(f"unknown {what} {spec['name']!r}; expected one of {sorted(classes)}")
    return classes[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})


def kappa_from_name(spec: str | dict | KappaScheduler) -> KappaScheduler:
    """Build a scheduler from a name (``"linear"``, ``"cosine"``, ``"polynomial"``, ``"early"``), a
    dict from ``to_dict()`` or pass an instance through."""
    return _from_spec(spec, KappaScheduler, {"linear": LinearKappa, "polynomial": PolynomialKappa,
                                             "cosine": CosineKappa, "early": EarlyKappa}, "kappa scheduler")


class TimeDistribution(ABC):
    """A distribution on [0, 1] for the fraction ``s`` in ``τ_g = s · τ_max`` (docs/algorithm.md §3.3)."""

    name: str

    @abstractmethod
    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor: ...

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class LogitNormalTime(TimeDistribution):
    """s = sigmoid(m + σ·z), z ~ N(0, 1) (default m = 0, σ = 1); with probability ``uniform_fraction``,
    s ~ U(0, 1) instead.

    The uniform share puts weight back on the earliest states (s < 0.1 has probability 1.4 % under
    the plain law), where a video has few frames and its length is decided; it matters when κ
    inserts early (``EarlyKappa``), so that few training states have insertions pending.
    """

    mean: float = 0.0
    std: float = 1.0
    uniform_fraction: float = 0.0
    name = "logit_normal"

    def __post_init__(self) -> None:
        q = self.uniform_fraction
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ValueError(f"uniform_fraction must be a probability in [0, 1], got {q!r}")

    def sample(self, shape, generator=None, device=None) -> Tensor:
        z = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
        s = torch.sigmoid(self.mean + self.std * z)
        if self.uniform_fraction > 0:  # no extra draws otherwise: default draws stay as they were
            u = torch.rand((2, *s.shape), generator=generator, dtype=torch.float64, device=device)
            s = torch.where(u[0] < self.uniform_fraction, u[1], s)
        return s

    def to_dict(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std, "uniform_fraction": self.uniform_fraction}


@dataclass(frozen=True)
class UniformTime(TimeDistribution):
    """s ~ U(0, 1) (the paper's cost analysis assumes this)."""

    name = "uniform"

    def sample(self, shape, generator=None, device=None) -> Tensor:
        return torch.rand(shape, generator=generator, dtype=torch.float64, device=device)


def time_distribution_from_name(spec: str | dict | TimeDistribution) -> TimeDistribution:
    """Build a time distribution from ``"logit_normal"`` / ``"uniform"``, a dict, or an instance."""
    return _from_spec(spec, TimeDistribution, {"logit_normal": LogitNormalTime, "uniform": UniformTime},
                      "time distribution")
