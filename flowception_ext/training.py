"""Trainer: AdamW, warm-up + cosine LR, gradient clipping, EMA, bf16 autocast, gradient
accumulation, frame-budget batches, DistributedDataParallel, crash-safe checkpoints.

Determinism and resuming. Every micro-batch draws its training state from a generator seeded
by ``(seed, step, micro-batch index)``, and the data order is a function of ``(seed, epoch)``
(:class:`~flowception_ext.data.FrameBudgetBatchSampler`). A checkpoint therefore needs only the
weights, the EMA, the optimizer moments and the data position to continue exactly, and
``N`` processes with ``A`` accumulation steps see the same micro-batches as one process with
``N·A`` accumulation steps: micro-batch ``m`` of a step is global batch ``step·N·A + m``.

Loading. Batches come from a ``torch.utils.data.DataLoader`` (``TrainConfig.num_workers``
processes; 0: in the training process) over the samplers' micro-batches, in the order the steps
consume them. Items of a :class:`~flowception_ext.data.VideoDataset` are looked up as
``dataset[index, epoch]``, so random clips and crops are functions of ``(seed, epoch, index)``
and the same in any worker. The workers load ahead; a checkpoint stores the batches *consumed*,
and a resumed run starts a new loader there, so the batches, and the results, are the same for
any number of workers.

Devices. Batches are collated and their training states drawn on the CPU, from a CPU generator,
then moved to the model's device: a seed gives the same noisy inputs and targets on every device
(the model's arithmetic may still differ in the last bits between devices). Checkpoints hold CPU
tensors and load through the CPU, so they move freely between devices.

Checkpoints are directories ``<out>/checkpoints/step_XXXXXXXX`` (``config.json``,
``model.safetensors``, ``ema.safetensors``, ``optimizer.safetensors``, ``trainer_state.json``),
each built under a temporary name and renamed into place, then published by rewriting
``<out>/checkpoints/latest`` atomically. A crash at any moment leaves the previous checkpoint
whole and ``latest`` pointing at a complete one. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import _devices
from ._utils import dataclass_from_dict
from .baselines import make_autoregressive_state, make_full_sequence_state
from .callbacks import Callback, make_loggers
from .checkpoint import atomic_directory, load_json, load_tensors, save_json, save_tensors
from .data import FrameBudgetBatchSampler, VideoDataset
from .data.loading import KeyedItems, MicroBatches, collate_keyed
from .losses import RATE_SLOTS, flowception_loss
from .model import FlowceptionDiT
from .model.config import FlowceptionConfig
from .noising import NoisingConfig, TrainingState, make_training_state
from .packing import PackedVideos

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "finished_checkpoint", "latest_checkpoint",
           "resumable_checkpoint"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint written before it is intact."""


@dataclass
class TrainConfig:
    """Training hyper-parameters (all JSON-serialisable).

    ``frames_per_batch`` is the frame budget of one micro-batch (one process, one accumulation
    step); a step sees ``world_size × grad_accum`` micro-batches. ``num_workers`` DataLoader
    processes load the batches (0: the training process does); it does not change the results.
    """

    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    frames_per_batch: int = 256
    grad_accum: int = 1
    num_workers: int = 0
    bf16: bool = False
    seed: int = 0
    objective: str = "flowception"  # or "full_sequence", "autoregressive" (the baselines)
    noising: NoisingConfig = field(default_factory=NoisingConfig)
    insertion_weight: float = 1.0
    rate_slots: str = "insertable"  # or "flowing" (see flowception_loss)
    out_dir: str = "runs/default"
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    preview_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.noising, dict):
            self.noising = NoisingConfig.from_dict(self.noising)
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        for name in ("steps", "frames_per_batch", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if self.warmup_steps < 0 or self.preview_every < 0:
            raise ValueError("warmup_steps and preview_every must be >= 0")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"lr must be > 0 and min_lr_ratio in [0, 1], got {self.lr}, {self.min_lr_ratio}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.rate_slots not in RATE_SLOTS:
            raise ValueError(f"rate_slots must be one of {RATE_SLOTS}, got {self.rate_slots!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["noising"] = self.noising.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data)

    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr``, then cosine decay to ``min_lr_ratio · lr`` at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _to_device(state: TrainingState, labels: Tensor | None, device: torch.device | None
               ) -> tuple[TrainingState, Tensor | None]:
    """The training state (and labels) on ``device`` (``None``: where they are)."""
    if device is None or state.inputs.frames.device == device:
        return state, labels
    moved = {f.name: getattr(state, f.name).to(device) for f in dataclasses.fields(state)}
    return dataclasses.replace(state, **moved), None if labels is None else labels.to(device)


def _objective(make_state: Callable, learns_rates: bool) -> Callable:
    """The loss of one micro-batch: draw a training state, run the model, score it. The baselines
    learn no insertion rates (their insertion loss has weight 0)."""
    def objective(model, videos, labels, generator, config: TrainConfig, device=None):
        state = make_state(videos, generator=generator, config=config.noising)
        state, labels = _to_device(state, labels, device)
        if labels is not None and model.config.num_classes:
            labels = torch.where(state.cond_dropped, model.null_label, labels)
        velocity, log_rate = model(state.inputs, labels)
        return flowception_loss(velocity, log_rate if learns_rates else None, state,
                                insertion_weight=config.insertion_weight if learns_rates else 0.0,
                                velocity_weight=model.velocity_loss_weight(state.inputs.times),
                                rate_slots=config.rate_slots)
    return objective


def _objectives() -> dict[str, Callable]:
    return {
        "flowception": _objective(make_training_state, learns_rates=True),
        "full_sequence": _objective(make_full_sequence_state, learns_rates=False),
        "autoregressive": _objective(make_autoregressive_state, learns_rates=False),
    }


OBJECTIVES = ("flowception", "full_sequence", "autoregressive")


def _micro_seed(seed: int, step: int, micro: int) -> int:
    digest = hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def train_device(requested: str | torch.device | None, model_device: torch.device, backend: str | None = None,
                 local_rank: int | None = None) -> torch.device:
    """The device to train on (no availability check).

    ``requested`` wins; a bare ``"cuda"`` means ``cuda:local_rank`` under torchrun. Without a
    request, an NCCL process group means the GPU torchrun assigned (``cuda:local_rank``), and
    anything else the model's current device (so the Python API moves nothing by default).
    """
    if requested is None:
        if backend is not None and "nccl" in backend:
            return torch.device("cuda", local_rank or 0)
        return model_device
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def collective_device(backend: str, device: torch.device) -> torch.device:
    """Where the tensors of a collective must live for a process group ``backend``: gloo reduces
    CPU tensors, NCCL CUDA ones; a multi-device group (``"cpu:gloo,cuda:nccl"``) serves the training
    device's type if it has a backend for it; any other backend gets the training device."""
    backend = str(backend).lower()
    if ":" in backend:  # one backend per device type
        types = dict(part.split(":", 1) for part in backend.split(","))
        if device.type not in types:
            return torch.device("cpu") if "cpu" in types else device
        backend = types[device.type]
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"an NCCL process group needs a CUDA device, but device is {device}; "
                         "train on CUDA or initialise the process group with the gloo backend")
    return device


_CHECKPOINT_NAME = re.compile(r"step_\d{8}")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or ``None``.

    The ``latest`` pointer may name only a checkpoint directory of this run
    (``step_XXXXXXXX``); any other name (a path elsewhere, ``..``) is refused with a ValueError."""
    ckpt_dir = Path(out_dir) / "checkpoints"
    pointer = ckpt_dir / "latest"
    if pointer.is_file():
        name = load_json(pointer).get("name")
        if not isinstance(name, str) or not _CHECKPOINT_NAME.fullmatch(name):
            raise ValueError(f"{pointer} names {name!r}, which is not a checkpoint directory of this run "
                             "(expected step_XXXXXXXX); refusing to follow it")
        if (ckpt_dir / name / "trainer_state.json").is_file():
            return ckpt_dir / name
    complete = _complete_checkpoints(ckpt_dir)
    return complete[-1] if complete else None


def _complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """The run's checkpoint directories that were published whole, oldest first."""
    return sorted(p for p in ckpt_dir.glob("step_*")
                  if _CHECKPOINT_NAME.fullmatch(p.name) and (p / "trainer_state.json").is_file())


# TrainConfig fields that leave the trained weights alone: the progress bar, the loader workers
# and the bookkeeping of logs and checkpoints (where and how often), so a copied or moved run
# directory still holds the same run.
_BOOKKEEPING = ("progress", "num_workers", "out_dir", "log_every", "checkpoint_every", "keep_checkpoints")


def _same_run(path: Path, model_config: FlowceptionConfig, config: TrainConfig) -> bool:
    """Whether the checkpoint ``path`` was written by a run with this model and training
    configuration (bookkeeping fields aside; fields added since compare at their defaults)."""
    try:
        saved_model = FlowceptionConfig.from_dict(load_json(path / "config.json")).to_dict()
        saved_train = TrainConfig.from_dict(load_json(path / "trainer_state.json")["train_config"]).to_dict()
    except (OSError, KeyError, TypeError, ValueError):
        return False

    def canonical(d: dict) -> dict:  # JSON form (tuples as lists), without what leaves the result alone
        return {k: v for k, v in json.loads(json.dumps(d)).items() if k not in _BOOKKEEPING}

    return (canonical(saved_model) == canonical(model_config.to_dict())
            and canonical(saved_train) == canonical(config.to_dict()))


def finished_checkpoint(out_dir: str | Path, model_config: FlowceptionConfig, config: TrainConfig) -> Path | None:
    """The final checkpoint (step ``config.steps``) of an earlier run in ``out_dir`` with the same
    model and training configuration (progress bar, loader workers, output directory, log and
    checkpoint intervals aside: they do not change the result), so a rerun can skip training;
    else ``None``. Fields added to the configs since that run compare at their defaults."""
    path = Path(out_dir) / "checkpoints" / f"step_{config.steps:08d}"
    return path if _same_run(path, model_config, config) and (path / "ema.safetensors").is_file() else None


def resumable_checkpoint(out_dir: str | Path, model_config: FlowceptionConfig, config: TrainConfig) -> Path | None:
    """The newest checkpoint in ``out_dir`` of an interrupted run with the same model and
    training configuration (as :func:`finished_checkpoint` compares them), for
    :meth:`Trainer.resume`; ``None`` when there is none or the newest is another run's."""
    newest = latest_checkpoint(out_dir)
    return newest if newest is not None and _same_run(newest, model_config, config) else None


class Trainer:
    """Train a :class:`FlowceptionDiT` (or a baseline on the same backbone) on a video dataset.

    ``dataset`` items are clean videos ``[n, C, H, W]`` (or ``(video, label)`` pairs for
    class-conditional models), and it exposes ``lengths`` (frames of each item). A
    :class:`~flowception_ext.data.VideoDataset` is indexed ``dataset[index, epoch]``, any other
    dataset ``dataset[index]``; with ``num_workers > 0`` it must be picklable.
    Launch under ``torchrun --nproc-per-node N`` for DistributedDataParallel (gloo on the CPU,
    nccl on GPUs); logging and checkpoints then come from rank 0 only.

    Devices: the model is moved to ``device`` when given (a bare ``"cuda"`` under torchrun means
    ``cuda:LOCAL_RANK``); otherwise, under an NCCL process group, to ``cuda:LOCAL_RANK``, and
    otherwise it stays where it is. Training states are drawn on the CPU from a CPU generator
    and moved to that device, so a seed means the same inputs on every device; collectives use
    CPU tensors for gloo and the CUDA device for NCCL; checkpoints hold CPU tensors.

    Callbacks and loggers (:mod:`flowception_ext.callbacks`) run on rank 0: ``loggers`` are
    names from :data:`~flowception_ext.callbacks.LOGGERS` or callback instances (default:
    ``metrics.jsonl``), ``callbacks`` any further :class:`~flowception_ext.callbacks.Callback`.
    With ``config.preview_every``, an unconditional video sampled with the EMA weights (the same
    noise each time) goes to every callback's ``on_video``.
    """

    def __init__(self, model: FlowceptionDiT, dataset, config: TrainConfig, *,
                 callbacks: Sequence[Callback] = (), loggers: Sequence[str | Callback] = ("jsonl",),
                 device: str | torch.device | None = None) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.dataset = dataset
        names = [x for x in loggers if isinstance(x, str)]
        self.callbacks: list[Callback] = [*make_loggers(names), *(x for x in loggers if not isinstance(x, str)),
                                          *callbacks]
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks and loggers must be Callback instances (or logger names), "
                                f"got {type(cb).__name__}")
        self._pending: list[dict] = []  # records logged before fit() started the loggers
        self._fitting = False
        self._stop_requested = False
        self.objective = _objectives()[config.objective]
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        backend = dist.get_backend() if self.distributed else None
        local_rank = int(os.environ["LOCAL_RANK"]) if self.distributed and "LOCAL_RANK" in os.environ else None
        if device is not None:
            device = _devices.check_device(device)
        model_device = _devices.module_device(model) or torch.device("cpu")
        self.device = _devices.check_device(train_device(device, model_device, backend, local_rank))
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        # Collectives (the metrics all-reduce here, DDP's buckets, barriers) run on this device.
        self.collective_device = collective_device(backend, self.device) if self.distributed else None
        if self.device.type == "cuda" and self.collective_device == self.device:
            torch.cuda.set_device(self.device)  # NCCL's barrier and DDP use the current device
        self.model = model.to(self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids) if self.distributed else None
        self.net = model if self.ddp is None else _DDPModel(self.ddp, model)
        self.ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.dim() < 2 or "embedding" in name or name.endswith("rate_token") else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas)
        micro_per_step = self.world_size * config.grad_accum
        lengths = list(dataset.lengths)
        # Micro-batch a of this rank is shard (a·world_size + rank) of world_size·grad_accum.
        self.samplers = [FrameBudgetBatchSampler(lengths, config.frames_per_batch, shuffle=True, seed=config.seed,
                                                 rank=a * self.world_size + self.rank, world_size=micro_per_step)
                         for a in range(config.grad_accum)]
        self._iters = [s.endless() for s in self.samplers]   # what the steps consumed
        self._keyed = isinstance(dataset, VideoDataset)
        self._loader: Any = None                              # the DataLoader's iterator, started on demand
        self.step = 0
        self.resumed_from: Path | None = None  # the checkpoint resume() continued from
        self.out_dir = Path(config.out_dir)
        if self.rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)

    # ---- data ---------------------------------------------------------------------------

    def _next_batch(self, a: int) -> tuple[PackedVideos, Tensor | None]:
        """Micro-batch ``a`` of this step, collated on the CPU (the objective moves the state)."""
        if self._loader is None:
            self._loader = self._start_loader(a)
        epoch, indices = next(self._iters[a])
        keys = [(i, epoch) for i in indices] if self._keyed else list(indices)
        loaded_keys, videos, labels = next(self._loader)
        if loaded_keys != keys:  # cannot happen unless the samplers were changed behind the trainer's back
            raise RuntimeError(f"the data loader delivered items {loaded_keys}, but the sampler expected {keys}")
        return videos, labels

    def _start_loader(self, first: int):
        """A DataLoader iterator over the micro-batches from the consumed position on (slot ``first``
        next): copies of the samplers drive it, so its prefetching does not move the positions a
        checkpoint stores."""
        batches = MicroBatches([copy.deepcopy(s) for s in self.samplers], self._keyed, first)
        loader = torch.utils.data.DataLoader(
            KeyedItems(self.dataset), batch_sampler=batches, collate_fn=collate_keyed,
            num_workers=self.config.num_workers,
            generator=torch.Generator().manual_seed(self.config.seed))  # leaves the global RNG alone
        return iter(loader)

    def _stop_loader(self) -> None:
        """Drop the loader (its workers exit); the next batch starts one at the consumed position."""
        self._loader = None

    # ---- one step -----------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "velocity": 0.0, "insertion": 0.0}
        frames = 0
        for a in range(cfg.grad_accum):
            videos, labels = self._next_batch(a)
            frames += videos.num_frames
            micro = a * self.world_size + self.rank
            # A CPU generator for the state draws: the same states on every device.
            generator = torch.Generator().manual_seed(_micro_seed(cfg.seed, self.step, micro))
            sync = self.ddp is None or a == cfg.grad_accum - 1
            ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
            with ctx, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = self.objective(self.net, videos, labels, generator, cfg, device=self.device)
                (loss.total / cfg.grad_accum).backward()
            for key, value in (("loss", loss.total), ("velocity", loss.velocity), ("insertion", loss.insertion)):
                totals[key] += float(value.detach()) / cfg.grad_accum
        if self.distributed:
            t = torch.tensor([totals["loss"], totals["velocity"], totals["insertion"], frames], dtype=torch.float64,
                             device=self.collective_device)
            dist.all_reduce(t)
            totals = {"loss": float(t[0]) / self.world_size, "velocity": float(t[1]) / self.world_size,
                      "insertion": float(t[2]) / self.world_size}
            frames = int(t[3])
        if not math.isfinite(totals["loss"]):
            raise TrainingDiverged(
                f"loss is {totals['loss']} at step {self.step}; stopping. The last checkpoint "
                f"({latest_checkpoint(self.out_dir) or 'none written yet'}) is intact.")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return {**totals, "grad_norm": float(grad_norm), "lr": cfg.lr_at(self.step - 1), "frames": frames}

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, value in self.model.state_dict().items():
            ema = self.ema[name]
            if value.is_floating_point():
                ema.mul_(decay).add_(value.float(), alpha=1 - decay)
            else:
                ema.copy_(value)

    # ---- the loop -----------------------------------------------------------------------

    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train until step ``until`` (default ``config.steps``; the LR schedule always spans
        ``config.steps``), logging, previewing and checkpointing on the way; a checkpoint is
        written at the last step."""
        cfg = self.config
        until = cfg.steps if until is None else min(until, cfg.steps)
        bar = tqdm(total=until, initial=self.step, desc="train", disable=not cfg.progress or self.rank != 0)
        last: dict[str, float] = {}
        self._stop_requested = False
        try:
            self._call("on_fit_start")
            self._fitting = True
            for record in self._pending:
                self._call("on_log", record)
            self._pending = []
            last = self._fit_loop(until, bar)
            return last
        finally:
            self._fitting = False
            self._stop_loader()  # the workers exit; a later fit() starts a loader where this one stopped
            bar.close()
            self._call("on_fit_end", last)

    def _fit_loop(self, until: int, bar) -> dict[str, float]:
        cfg = self.config
        last: dict[str, float] = {}
        window_frames, window_start = 0, time.perf_counter()
        while self.step < until:
            metrics = self.train_step()
            window_frames += metrics["frames"]
            last = metrics
            self._call("on_step_end", metrics)
            if self.rank == 0:
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == until or self._stop_requested:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, **{k: round(v, 6) for k, v in metrics.items()},
                              "frames_per_s": round(window_frames / max(elapsed, 1e-9), 1)}
                    self.log(record)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", fps=f"{record['frames_per_s']:.0f}")
                    window_frames, window_start = 0, time.perf_counter()
            if cfg.preview_every and self.step % cfg.preview_every == 0 and self.rank == 0:
                self._call("on_video", "preview", self.preview_video())
            stopping = self._stop_requested
            if self.distributed:  # every rank stops at the same step
                flag = torch.tensor([float(stopping)], device=self.collective_device)
                dist.all_reduce(flag)
                stopping = bool(flag.item())
            if self.step % cfg.checkpoint_every == 0 or self.step == until or stopping:
                path = self.save_checkpoint()
                if path is not None:
                    self._call("on_checkpoint", path)
            if stopping:
                break
        return last

    def stop(self) -> None:
        """Ask :meth:`fit` to stop after the current step (with a checkpoint), e.g. from a callback."""
        self._stop_requested = True

    def log(self, record: dict[str, Any]) -> None:
        """Hand ``record`` (with a ``step``) to every logger's ``on_log`` (rank 0); before
        :meth:`fit` starts the loggers, it waits for them."""
        if self.rank != 0:
            return
        if self._fitting:
            self._call("on_log", record)
        else:
            self._pending.append(record)

    def _call(self, hook: str, *args) -> None:
        if self.rank == 0:
            for cb in self.callbacks:
                getattr(cb, hook)(self, *args)

    @torch.no_grad()
    def preview_video(self, steps: int = 32) -> Tensor:
        """One unconditional video, ``[n, C, H, W]`` on the CPU, sampled with the EMA weights in
        ``steps`` steps (per frame for the autoregressive baseline) from the same seed at every
        call; baselines generate the dataset's median length. The global RNG is left alone."""
        from .sampling import sample, sample_autoregressive, sample_full_sequence

        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema)  # copies into the model's dtypes and device
        lengths = sorted(self.dataset.lengths)
        median = int(lengths[len(lengths) // 2])
        labels = torch.zeros(1, dtype=torch.long) if model.config.num_classes else None
        common = dict(num_videos=1, labels=labels, generator=torch.Generator().manual_seed(self.config.seed),
                      progress=False)
        if self.config.objective == "flowception":
            out = sample(model, steps=steps, max_frames=2 * lengths[-1], **common)
        elif self.config.objective == "full_sequence":
            out = sample_full_sequence(model, num_frames=median, steps=steps, **common)
        else:
            out = sample_autoregressive(model, num_frames=median, steps_per_frame=steps, **common)
        return out.videos[0].float().cpu()

    # ---- checkpoints --------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_XXXXXXXX`` and publish it as ``latest`` (rank 0; others wait)."""
        path = None
        if self.rank == 0:
            ckpt_dir = self.out_dir / "checkpoints"
            path = ckpt_dir / f"step_{self.step:08d}"
            with atomic_directory(path) as tmp:
                save_json(tmp / "config.json", self.model.config.to_dict())
                save_tensors(tmp / "model.safetensors", _on_cpu(self.model.state_dict()))
                save_tensors(tmp / "ema.safetensors", _on_cpu(self.ema))
                tensors, groups = _optimizer_to_tensors(self.optimizer)
                save_tensors(tmp / "optimizer.safetensors", _on_cpu(tensors))
                save_json(tmp / "trainer_state.json", {
                    "step": self.step,
                    "train_config": self.config.to_dict(),
                    "world_size": self.world_size,
                    "optimizer_param_groups": groups,
                    "samplers": [s.state_dict() for s in self.samplers],
                })
            save_json(ckpt_dir / "latest", {"name": path.name})
            old = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())[:-self.config.keep_checkpoints]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
        if self.distributed:
            dist.barrier()
        return path

    def resume(self, directory: str | Path | None = None) -> int:
        """Continue from a checkpoint directory (default: the newest intact one of
        ``config.out_dir``) and return the step reached (``resumed_from`` names the directory).

        Without ``directory``, a damaged checkpoint (a truncated or unreadable file) is skipped
        with a warning naming it and the reason, and the next older one is tried; a ValueError
        says why each failed when none is intact. FileNotFoundError when there is none at all."""
        if directory is not None:
            candidates = [Path(directory)]
        else:
            ckpt_dir = self.out_dir / "checkpoints"
            newest = latest_checkpoint(self.out_dir)  # validates the pointer
            candidates = [newest] if newest is not None else []
            candidates += [p for p in reversed(_complete_checkpoints(ckpt_dir)) if p != newest]
            if not candidates:
                raise FileNotFoundError(f"no checkpoint to resume from in {ckpt_dir}")
        skipped = []
        for path in candidates:
            try:
                saved = _read_checkpoint(path)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if directory is not None:
                    raise
                skipped.append(f"{path.name}: {exc}")
                continue
            if skipped:
                warnings.warn(f"resuming from {path.name}; skipped damaged checkpoint(s): " + "; ".join(skipped),
                              stacklevel=2)
            self._load_checkpoint(path, saved)
            self.resumed_from = path
            return self.step
        raise ValueError("no intact checkpoint to resume from: " + "; ".join(skipped))

    def _load_checkpoint(self, directory: Path, saved: dict[str, Any]) -> None:
        state = saved["trainer_state"]
        if state.get("world_size", 1) * len(state["samplers"]) != self.world_size * self.config.grad_accum:
            raise ValueError(f"{directory} was written with world_size × grad_accum = "
                             f"{state['world_size'] * len(state['samplers'])}; this run has "
                             f"{self.world_size * self.config.grad_accum}, so it cannot continue exactly")
        # Everything was read to the CPU; load_state_dict copies into the model's tensors and the
        # optimizer moves its state to its parameters' device.
        try:
            self.model.load_state_dict(saved["model"])
        except RuntimeError as exc:
            raise ValueError(f"{directory / 'model.safetensors'} does not match the model: {exc}") from None
        if set(saved["ema"]) != set(self.ema):
            raise ValueError(f"{directory / 'ema.safetensors'} does not match the model")
        self.ema = {k: v.float().to(self.ema[k].device) for k, v in saved["ema"].items()}
        _optimizer_from_tensors(self.optimizer, saved["optimizer"], state["optimizer_param_groups"],
                                directory / "optimizer.safetensors")
        # Every rank has consumed as many batches as rank 0, whose positions were saved.
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(s)
        self._iters = [s.endless() for s in self.samplers]
        self._stop_loader()
        self.step = int(state["step"])


def _read_checkpoint(directory: Path) -> dict[str, Any]:
    """Every file of a checkpoint, read to the CPU; a missing, truncated or unreadable file
    raises (naming it) before anything is loaded into the trainer."""
    state = load_json(directory / "trainer_state.json")
    if not isinstance(state, dict) or not {"step", "samplers", "optimizer_param_groups"} <= set(state):
        raise ValueError(f"{directory / 'trainer_state.json'} is not a trainer state")
    return {"trainer_state": state,
            "model": load_tensors(directory / "model.safetensors", device="cpu"),
            "ema": load_tensors(directory / "ema.safetensors", device="cpu"),
            "optimizer": load_tensors(directory / "optimizer.safetensors", device="cpu")}


class _DDPModel(nn.Module):
    """Call the DDP wrapper but expose the wrapped model's attributes (config, null_label)."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel, model: FlowceptionDiT) -> None:
        super().__init__()
        object.__setattr__(self, "_ddp", ddp)
        object.__setattr__(self, "_model", model)

    def forward(self, *args, **kwargs):
        return self._ddp(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_model"), name)


def _on_cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints hold CPU tensors, whatever device trained (a no-op on the CPU)."""
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"{idx}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def _optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict],
                            path: Path) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path} does not match the optimizer: {exc}") from None
