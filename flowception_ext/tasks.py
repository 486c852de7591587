"""The task names, one vocabulary for Python, ``flowception train`` and ``flowception sample``.

* ``unconditional`` — no given frames;
* ``image_to_video`` — the first frame is given;
* ``interpolation`` — keyframes are given (training: the first frame and a random subset,
  sometimes the last; sampling: the first and last frames of a held-out video, or the files);
* ``extension`` — the first frames of a video are given and it goes on (sampling only: training
  has no extension task yet; :func:`~flowception_ext.sampling.sample` extends with
  :meth:`~flowception_ext.sampling.Context.extend`).

The short spellings of earlier versions (``uncond``, ``i2v``, ``interpolate``, ``extend``) are
still accepted, with a :class:`DeprecationWarning`.
"""

from __future__ import annotations

import warnings

__all__ = ["TASKS", "TRAINING_TASKS", "DEPRECATED_TASK_NAMES", "canonical_task"]

TASKS = ("unconditional", "image_to_video", "interpolation", "extension")
TRAINING_TASKS = ("unconditional", "image_to_video", "interpolation")
DEPRECATED_TASK_NAMES = {"uncond": "unconditional", "i2v": "image_to_video", "interpolate": "interpolation",
                         "extend": "extension"}


def canonical_task(name: str, argument: str = "task", allowed: tuple[str, ...] = TASKS) -> str:
    """The task called ``name`` (an old spelling warns and is translated); a ValueError naming
    ``argument`` for anything outside ``allowed``."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a task name (a str), got {type(name).__name__}")
    if name in DEPRECATED_TASK_NAMES:
        new = DEPRECATED_TASK_NAMES[name]
        warnings.warn(f"{argument}: the task name {name!r} is deprecated; use {new!r}", DeprecationWarning,
                      stacklevel=3)
        name = new
    if name not in allowed:
        hint = " (training has no extension task)" if name == "extension" else ""
        raise ValueError(f"{argument}: unknown task {name!r}{hint}; expected one of {', '.join(allowed)}")
    return name
