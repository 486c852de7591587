"""Devices and random draws shared by the samplers, the trainer and the CLI.

Random numbers are drawn on the generator's device and then moved to the device that uses them
(as diffusers' ``randn_tensor`` does). A CPU ``torch.Generator`` therefore gives the same numbers
whatever device the model is on: a seed means the same noise on every machine. A generator on the
model's device works too (its numbers are that device's own stream). Any other combination — say
a CUDA generator for a CPU model — is refused with a ``ValueError`` naming the argument.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["check_device", "check_generators", "device_problem", "draw", "module_device", "poisson", "randperm",
           "same_device"]


def module_device(module: nn.Module) -> torch.device | None:
    """The device of the module's first parameter (else first buffer); ``None`` if it has neither."""
    for tensor in (next(module.parameters(), None), next(module.buffers(), None)):
        if tensor is not None:
            return tensor.device
    return None


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; an accelerator without an index means its current one."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index == b.index or a.type in ("cpu", "meta"):
        return True
    current = _current_index(a.type)
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def _current_index(device_type: str) -> int:
    backend = getattr(torch, device_type, None)
    try:
        return int(backend.current_device())  # type: ignore[union-attr]
    except Exception:  # no such backend, or not initialised: index 0 is the default
        return 0


def device_problem(device: str | torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine (a malformed name, an absent accelerator), or ``None``."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"{device!r} is not a torch device (use e.g. 'cpu', 'cuda' or 'cuda:1')"
    if device.type in ("cpu", "meta"):
        return None
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None:
        return None  # a device type torch knows but we cannot check: torch will tell
    if not is_available():
        return f"{str(device)!r} is not available on this machine (torch.{device.type}.is_available() is False)"
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        return f"{str(device)!r} does not exist: this machine has {count} {device.type} device(s)"
    return None


def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else a ``ValueError`` naming ``name``."""
    problem = device_problem(device)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
    return torch.device(device)


def _check_generator(generator: torch.Generator, device: torch.device, name: str, user: str) -> None:
    where = generator.device
    if where.type != "cpu" and not same_device(where, device):
        raise ValueError(f"{name} is on {where} but {user} on {device}: pass a CPU torch.Generator "
                         f"(its numbers are drawn on the CPU and moved to {device}) or one on {device}")


def check_generators(generator, device: torch.device, num_videos: int, user: str = "the model is"
                     ) -> torch.Generator | list[torch.Generator] | None:
    """``None``, one ``torch.Generator``, or a list of ``num_videos`` (one per video), each on the CPU
    or on ``device`` (``user``: what lives there, for the message). Raises TypeError/ValueError naming ``generator``."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        _check_generator(generator, device, "generator", user)
        return generator
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(f"generator must be a torch.Generator or a list of {num_videos} (one per video), "
                        f"got {type(generator).__name__}")
    if len(generator) != num_videos:
        raise ValueError(f"generator must be one torch.Generator or a list of {num_videos} (one per video), "
                         f"got a list of {len(generator)}")
    for i, g in enumerate(generator):
        _check_generator(g, device, f"generator[{i}]", user)
    return list(generator)


def draw(fn: Callable[..., Tensor], shape: Sequence[int], generator: torch.Generator | None,
         device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """``fn(shape, generator=, device=, dtype=)`` (``torch.randn``, ``torch.rand``) drawn on the
    generator's device and moved to ``device``; without a generator, ``device``'s global one draws."""
    where = device if generator is None else generator.device
    return fn(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


def randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """``torch.randperm(n)`` drawn like :func:`draw`."""
    where = device if generator is None else generator.device
    return torch.randperm(n, generator=generator, device=where).to(device)


def poisson(rates: Tensor, generator: torch.Generator | None) -> Tensor:
    """``torch.poisson(rates)`` drawn on the generator's device, returned on the rates' device."""
    where = rates.device if generator is None else generator.device
    return torch.poisson(rates.to(where), generator=generator).to(rates.device)
