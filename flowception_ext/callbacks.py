"""Trainer callbacks and the built-in loggers.

A callback subclasses :class:`Callback` and overrides the hooks it needs; the
:class:`~flowception_ext.training.Trainer` calls them on rank 0 only, in the order given:

* ``on_fit_start(trainer)`` — before the first step of :meth:`~Trainer.fit` (``trainer.step`` is
  where it starts: 0, or the step a resume reached);
* ``on_step_end(trainer, metrics)`` — after every optimizer step (``metrics``: ``loss``,
  ``velocity``, ``insertion``, ``grad_norm``, ``lr``, ``frames``);
* ``on_log(trainer, record)`` — every ``log_every`` steps, with the record the loggers write
  (the metrics plus ``step`` and ``frames_per_s``, or an ``override`` event of a resumed run);
* ``on_video(trainer, tag, video)`` — a sampled preview (``[n, C, H, W]`` in [-1, 1]) every
  ``preview_every`` steps;
* ``on_checkpoint(trainer, path)`` — after a checkpoint is published;
* ``on_fit_end(trainer, metrics)`` — when :meth:`~Trainer.fit` returns or fails (``metrics``:
  the last step's, ``{}`` if none ran).

Loggers: :class:`JsonlLogger` (``metrics.jsonl``, the default), :class:`TensorBoardLogger`
(needs ``tensorboard``) and :class:`WandbLogger` (needs ``wandb``; ``WANDB_MODE=offline`` and the
other ``WANDB_*`` settings are honoured). :func:`make_loggers` builds them by name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from torch import Tensor

from .checkpoint import save_tensors, save_text

if TYPE_CHECKING:
    from .training import Trainer

__all__ = ["Callback", "JsonlLogger", "LOGGERS", "TensorBoardLogger", "WandbLogger", "make_loggers"]

LOGGERS = ("jsonl", "tensorboard", "wandb")


class Callback:
    """Hooks into :meth:`Trainer.fit <flowception_ext.training.Trainer.fit>`; each does nothing here."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        pass

    def on_log(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        pass

    def on_video(self, trainer: "Trainer", tag: str, video: Tensor) -> None:
        pass

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        pass


def _preview_path(trainer: "Trainer", tag: str, suffix: str) -> Path:
    folder = trainer.out_dir / "previews"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{tag}_step_{trainer.step:08d}.{suffix}"


def _write_preview(trainer: "Trainer", tag: str, video: Tensor) -> Path:
    """The preview as a GIF in ``<out>/previews`` (a .safetensors tensor without imageio)."""
    from .io import save_video

    try:
        return save_video(video, _preview_path(trainer, tag, "gif"), fps=8)
    except ImportError:
        path = _preview_path(trainer, tag, "safetensors")
        save_tensors(path, {"video": video.detach().float().cpu().contiguous()})
        return path


class JsonlLogger(Callback):
    """One JSON object per line in ``<out>/metrics.jsonl``; previews as GIFs in ``<out>/previews``.

    A resumed run first drops the records past the step it resumes from (written after the
    checkpoint it continues, by a run that then stopped), so the file holds each step once."""

    def on_fit_start(self, trainer: "Trainer") -> None:
        path = trainer.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if _record_step(line) <= trainer.step]
        if len(kept) != len(lines):
            save_text(path, "".join(line + "\n" for line in kept))

    def on_log(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        with open(trainer.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def on_video(self, trainer: "Trainer", tag: str, video: Tensor) -> None:
        _write_preview(trainer, tag, video)


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0.0  # a torn last line: kept, as it was


class TensorBoardLogger(Callback):
    """Scalars (every numeric entry of a record, under its own name: ``loss``, ``velocity``,
    ``insertion``, ``grad_norm``, ``lr``, ``frames_per_s``) and previews (as image grids, one
    frame per image) in ``<out>/tensorboard``."""

    def __init__(self, log_dir: str | Path | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError("the tensorboard logger needs tensorboard: pip install tensorboard "
                              "(or flowception_ext[loggers])") from exc
        self._writer_class = SummaryWriter
        self._log_dir = log_dir
        self.writer = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.writer is None:
            self.writer = self._writer_class(str(self._log_dir or trainer.out_dir / "tensorboard"),
                                             purge_step=trainer.step + 1)

    def on_log(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, record["step"])

    def on_video(self, trainer: "Trainer", tag: str, video: Tensor) -> None:
        frames = (video.detach().float().cpu().clamp(-1, 1) + 1) / 2
        self.writer.add_images(tag, frames, trainer.step, dataformats="NCHW")

    def on_fit_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.writer is not None:
            self.writer.flush()


class WandbLogger(Callback):
    """Weights & Biases: records through ``wandb.log`` and previews as ``wandb.Video`` (from the
    GIF :class:`JsonlLogger` writes). ``wandb.init`` gets the run directory and ``config``; the mode
    (``WANDB_MODE=offline`` for no network) and project come from the environment."""

    def __init__(self, config: dict[str, Any] | None = None, project: str | None = None) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("the wandb logger needs wandb: pip install wandb (or flowception_ext[loggers])") from exc
        self.wandb = wandb
        self.config = config
        self.project = project or os.environ.get("WANDB_PROJECT", "flowception")
        self.run = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.run is None:
            self.run = self.wandb.init(project=self.project, dir=str(trainer.out_dir), config=self.config,
                                       resume="allow", id=_wandb_id(trainer.out_dir))

    def on_log(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def on_video(self, trainer: "Trainer", tag: str, video: Tensor) -> None:
        path = _write_preview(trainer, f"wandb_{tag}", video)
        if path.suffix == ".gif":
            self.run.log({tag: self.wandb.Video(str(path), format="gif")}, step=trainer.step)

    def on_fit_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _wandb_id(out_dir: Path) -> str:
    """One W&B run per run directory, kept in ``<out>/wandb_id`` so a resume continues it."""
    path = out_dir / "wandb_id"
    if not path.is_file():
        import secrets

        path.write_text(secrets.token_hex(8))
    return path.read_text().strip()


def make_loggers(names: Sequence[str], config: dict[str, Any] | None = None) -> list[Callback]:
    """The loggers called ``names`` (from :data:`LOGGERS`); ``config`` goes to W&B."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"logger: unknown {unknown}; expected some of {', '.join(LOGGERS)}")
    made = {"jsonl": JsonlLogger, "tensorboard": TensorBoardLogger, "wandb": lambda: WandbLogger(config)}
    return [made[name]() for name in dict.fromkeys(names)]
