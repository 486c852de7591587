"""Shared pieces of the MovingShapes experiments (``insertion_orders.py``, ``paradigms.py``,
``interpolation.py``): command line, data, training to a step or FLOP budget, sampling, metrics
with bootstrap confidence intervals, and the JSON/table output.

Defaults: MovingShapes at 16×16 with one shape per video and 8–16 frames, the ``tiny`` preset
with 4×4 patches (16 patch tokens + 1 rate token per frame), AdamW at 2e-3, 128 frames per batch.
They were chosen so a full run fits in 15–30 minutes on one CPU thread; with three shapes, 20
frames or a lower rate, a 2500-3000-step model lost the shapes in most generated frames.

Metrics, per generated video: :func:`flowception_ext.eval.video_metrics` (``consistent``,
``median_error``, ``frac_frames_le_1px``, ``shape_changed``, ``length``) and ``frechet``, a
Fréchet distance between Gaussians fitted to per-video motion statistics
(:func:`flowception_ext.eval.video_features`) of the generated videos and of the held-out real
videos they were conditioned on, after standardising each statistic by the real videos' mean and
spread. Lengths are left out (reported apart). The strict ``consistent`` verdict is close to 0
for every method at the model sizes that fit on a CPU, so it is reported but does not rank
anything.

Every number comes with a percentile bootstrap 95 % interval over the videos. For the Fréchet
distance, generated and real videos are resampled independently; resampling duplicates videos,
which shrinks the fitted spreads and moves the distance up, so its interval is shifted upwards
(for the near-zero real-vs-real distance it can lie entirely above the point estimate): read it
as the spread of the estimate, for comparing methods scored on the same number of videos.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

import flowception_ext as fe
from flowception_ext import viz
from flowception_ext.checkpoint import save_tensors
from flowception_ext.data import MovingShapes
from flowception_ext.costs import count_flops
from flowception_ext.noising import NoisingConfig
from flowception_ext.schedules import KappaScheduler
from flowception_ext.training import finished_checkpoint, resumable_checkpoint

__all__ = [
    "make_parser", "parse_args", "setup", "datasets", "reference_videos", "model_config", "train_model", "train_flops_per_step",
    "sample_flowception", "context_probe", "print_table", "fmt", "command_line", "write_json", "Timer",
    "save_samples", "finish_axes", "plot_metric_bars",
]

METRICS = ("consistent", "median_error", "frac_frames_le_1px", "frechet", "length")
METRIC_LABELS = {
    "consistent": "strict consistent",
    "median_error": "median err px (lower)",
    "frac_frames_le_1px": "frames <=1px (higher)",
    "shape_changed": "shape lost (lower)",
    "frechet": "Frechet dist (lower)",
    "length": "length",
    "drift_slope": "err slope px/frame",
}


# ---- command line -------------------------------------------------------------------------


def make_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """The options every MovingShapes script shares, with per-script ``defaults``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny configuration for CI (under 3 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the models and the sampler")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=Path(defaults.pop("out", "runs/shapes")), help="output directory")
    p.add_argument("--preset", default="tiny", help="model size preset")
    p.add_argument("--size", type=int, default=16, help="MovingShapes frame side (>= 16)")
    p.add_argument("--patch", type=int, default=4, help="patch size of the DiT")
    p.add_argument("--prediction", default="velocity", choices=("velocity", "clean"),
                   help="what the network predicts (FlowceptionConfig.prediction)")
    p.add_argument("--context-init", default="zero", choices=("zero", "random"),
                   help="initial context channels of the patch embedding (FlowceptionConfig.context_init)")
    p.add_argument("--rope-frame-scale", type=float, default=1.0,
                   help="multiplier on frame positions in RoPE (FlowceptionConfig.rope_frame_scale)")
    p.add_argument("--min-length", type=int, default=8, help="shortest training video")
    p.add_argument("--max-length", type=int, default=16, help="longest training video")
    p.add_argument("--max-shapes", type=int, default=1, help="shapes per video: 1..max-shapes (at most 3)")
    p.add_argument("--train-videos", type=int, default=4096, help="training videos")
    p.add_argument("--train-steps", type=int, default=2000, help="training steps (of the Flowception model)")
    p.add_argument("--frames-per-batch", type=int, default=128, help="frame budget of a training batch")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--num-videos", type=int, default=128, help="held-out videos to condition on / evaluate")
    p.add_argument("--sample-steps", type=int, default=40, help="1/h of the samplers (denoising steps per frame)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per confidence interval")
    p.set_defaults(**defaults)
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: dict) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick`` the ``quick`` values replace the defaults (explicit options still win)."""
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**quick)
    args = parser.parse_args(argv)
    for name in ("threads", "train_steps", "frames_per_batch", "num_videos", "sample_steps", "bootstrap",
                 "train_videos"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.min_length <= args.max_length:
        raise ValueError(f"need 1 <= --min-length <= --max-length, got {args.min_length}, {args.max_length}")
    if args.max_length > args.frames_per_batch:
        raise ValueError(f"--frames-per-batch ({args.frames_per_batch}) must hold the longest video ({args.max_length})")
    return args


def setup(args: argparse.Namespace) -> Path:
    """Threads and the output directory; returns the latter."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out


class Timer:
    """Wall-clock seconds since construction (``float(timer)``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __float__(self) -> float:
        return time.perf_counter() - self.start


# ---- data and models ----------------------------------------------------------------------


def datasets(args: argparse.Namespace, num_test: int | None = None,
             min_length: int | None = None, max_length: int | None = None) -> tuple[MovingShapes, MovingShapes]:
    """Training videos (seed ``args.seed``) and held-out videos (another seed: disjoint items)."""
    common = dict(size=args.size, min_length=args.min_length, max_length=args.max_length, max_shapes=args.max_shapes)
    train = MovingShapes(num_videos=args.train_videos, seed=args.seed, **common)
    test_lengths = dict(common, min_length=min_length or args.min_length, max_length=max_length or args.max_length)
    test = MovingShapes(num_videos=num_test or args.num_videos, seed=args.seed + 10_007, **test_lengths)
    return train, test


def reference_videos(args: argparse.Namespace) -> list[Tensor]:
    """Other real videos (a third seed), scored like generated ones: the floor of every metric."""
    data = MovingShapes(num_videos=args.num_videos, seed=args.seed + 20_011, size=args.size,
                        min_length=args.min_length, max_length=args.max_length, max_shapes=args.max_shapes)
    return [data[i] for i in range(len(data))]


def model_config(args: argparse.Namespace, *, attention: str = "bidirectional", rate_head: bool = True
                 ) -> fe.FlowceptionConfig:
    return fe.FlowceptionConfig.from_preset(args.preset, in_channels=3, frame_size=args.size, patch_size=args.patch,
                                            attention=attention, rate_head=rate_head,
                                            rope_frame_scale=args.rope_frame_scale, context_init=args.context_init,
                                            prediction=args.prediction)


CHECKPOINT_EVERY = 500  # steps between checkpoints: a killed run loses at most this many


def _train_config(args: argparse.Namespace, steps: int, out_dir: Path, objective: str, noising: NoisingConfig,
                  progress: bool = True) -> fe.TrainConfig:
    return fe.TrainConfig(steps=steps, lr=args.lr, warmup_steps=min(50, steps // 10), frames_per_batch=args.frames_per_batch,
                          seed=args.seed, objective=objective, noising=noising, out_dir=str(out_dir),
                          checkpoint_every=min(steps, CHECKPOINT_EVERY), log_every=max(1, min(50, steps)), progress=progress)


def train_model(args: argparse.Namespace, dataset: MovingShapes, out_dir: Path, *, steps: int,
                noising: NoisingConfig, objective: str = "flowception", attention: str = "bidirectional",
                rate_head: bool = True) -> tuple[fe.FlowceptionDiT, dict]:
    """Train one model for ``steps`` steps (checkpoint and ``metrics.jsonl`` in ``out_dir``);
    returns its EMA weights in a fresh model (eval mode) and a small record of the run."""
    timer = Timer()
    config = _train_config(args, steps, out_dir, objective, noising, sys.stderr.isatty())
    reused = finished_checkpoint(out_dir, model_config(args, attention=attention, rate_head=rate_head), config)
    if reused is not None:
        print(f"  reusing the finished run {reused} (same model and training config)", flush=True)
        ema = fe.FlowceptionDiT.from_pretrained(reused, weights="ema.safetensors").eval()
        return ema, {"objective": objective, "attention": attention, "steps": steps, "reused": str(reused),
                     "parameters": sum(p.numel() for p in ema.parameters())}
    torch.manual_seed(args.seed)
    model = fe.FlowceptionDiT(model_config(args, attention=attention, rate_head=rate_head))
    trainer = fe.Trainer(model, dataset, config)
    interrupted = resumable_checkpoint(out_dir, model.config, config)
    if interrupted is not None:  # a run killed part-way: continue it (the result is the same)
        print(f"  resuming the interrupted run from {interrupted}", flush=True)
        trainer.resume(interrupted)
    last = trainer.fit()
    ema = fe.FlowceptionDiT(model.config)
    ema.load_state_dict(trainer.ema)  # float32 copies; load_state_dict casts to the parameters' dtype
    ema.eval()
    record = {"objective": objective, "attention": attention, "steps": steps, "seconds": round(float(timer), 1),
              "final_loss": round(last.get("loss", math.nan), 5),
              "parameters": sum(p.numel() for p in model.parameters())}
    if interrupted is not None:
        record["resumed_from"] = str(interrupted)  # "seconds" then counts this process only
    print(f"  trained {objective}/{attention}: {steps} steps in {record['seconds']:.0f} s, "
          f"final loss {record['final_loss']:.4f}", flush=True)
    return ema, record


def save_samples(path: Path, samples: dict[str, Sequence[Tensor]]) -> Path:
    """Generated videos as safetensors (keys ``<method>/<index>``), to re-score them without resampling."""
    save_tensors(path, {f"{name}/{i}": v.contiguous() for name, vids in samples.items() for i, v in enumerate(vids)})
    return path


def train_flops_per_step(args: argparse.Namespace, dataset: MovingShapes, *, noising: NoisingConfig,
                         objective: str = "flowception", attention: str = "bidirectional", rate_head: bool = True,
                         probe_steps: int = 16) -> float:
    """Mean FLOPs (forward + backward, FlopCounterMode) of one real training step of this objective,
    over ``probe_steps`` steps of a throw-away model (the count depends on the drawn states)."""
    torch.manual_seed(args.seed)
    model = fe.FlowceptionDiT(model_config(args, attention=attention, rate_head=rate_head))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = fe.Trainer(model, dataset, _train_config(args, probe_steps, Path(tmp), objective, noising, False))
        counts = [count_flops(trainer.train_step)["total"] for _ in range(probe_steps)]
    return float(np.mean(counts))


# ---- sampling -----------------------------------------------------------------------------


def generators(seed: int, count: int, offset: int = 0) -> list[torch.Generator]:
    """One generator per video, so a video does not depend on the batch it is sampled in."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + offset + i) for i in range(count)]


def sample_flowception(model: fe.FlowceptionDiT, contexts: list[fe.Context], *, steps: int, seed: int,
                       order: str = "learned", target_lengths: Sequence[int] | None = None,
                       max_frames: int | None = None, batch: int = 64, kappa: str | dict | KappaScheduler = "linear",
                       insertion: str = "bernoulli") -> dict:
    """Flowception sampling of one video per context, in batches. With a fixed ``order``,
    ``target_lengths`` gives each video's length; videos are grouped by length (``sample`` takes
    one ``target_length`` per call). ``kappa`` and ``insertion`` go to :func:`flowception_ext.sample`
    (κ must be the one the model was trained with). Returns the videos (in context order) and
    their records."""
    if order != "learned" and (target_lengths is None or len(target_lengths) != len(contexts)):
        raise ValueError(f"order={order!r} needs one target length per context")
    gens = generators(seed, len(contexts))
    groups: dict[int | None, list[int]] = defaultdict(list)
    for i in range(len(contexts)):
        groups[None if order == "learned" else int(target_lengths[i])].append(i)
    videos: list[Tensor | None] = [None] * len(contexts)
    is_context: list[Tensor | None] = [None] * len(contexts)
    insert_time: list[Tensor | None] = [None] * len(contexts)
    hit = [False] * len(contexts)
    for length, members in sorted(groups.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        for start in range(0, len(members), batch):
            idx = members[start:start + batch]
            out = fe.sample(model, [contexts[i] for i in idx], n_start=0, steps=steps, order=order,
                            target_length=length, max_frames=max_frames, generator=[gens[i] for i in idx],
                            kappa=kappa, insertion=insertion, progress=False)
            for j, i in enumerate(idx):
                videos[i], is_context[i] = out.videos[j], out.is_context[j]
                insert_time[i], hit[i] = out.insert_time[j], out.max_frames_hit[j]
    return {"videos": videos, "is_context": is_context, "insert_time": insert_time, "max_frames_hit": hit}


# ---- metrics ------------------------------------------------------------------------------


@torch.no_grad()
def context_probe(model: fe.FlowceptionDiT, videos: Sequence[Tensor], t: float = 0.3, seed: int = 0) -> dict:
    """Does the network read the given first frame? Each video's frame 1, noised to ``t``, is
    shown beside a first frame: its own, or the next video's (``swapped``), flagged as context
    (``is_context``) or as an ordinary clean frame at ``t = 1`` (``unflagged``). Reported: the
    mean squared error of the clean-frame estimate ``X_t + (1 − t) v`` of frame 1 in each case.
    A network that reads the first frame has a much larger error with the swapped one."""
    videos = [v for v in videos if v.shape[0] >= 2]
    if not videos:
        raise ValueError("context_probe needs videos of at least 2 frames")
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(v[1].shape, generator=g) for v in videos]
    truth = torch.stack([v[1] for v in videos])
    result = {}
    for flag in ("context", "unflagged"):
        for which in ("own", "swapped"):
            first = [videos[(i + (which == "swapped")) % len(videos)][0] for i in range(len(videos))]
            frames = [torch.stack([f, t * v[1] + (1 - t) * e]) for f, v, e in zip(first, videos, noise)]
            packed = fe.PackedVideos.from_list(frames, times=[torch.tensor([1.0, t])] * len(videos),
                                               is_context=[torch.tensor([flag == "context", False])] * len(videos))
            velocity, _ = model(packed)
            clean = packed.frames[1::2] + (1 - t) * velocity[1::2]
            result[f"{flag}_{which}"] = round(float((clean - truth).square().mean()), 5)
    return result


# ---- output -------------------------------------------------------------------------------


def fmt(entry: dict, digits: int = 3) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def print_table(rows: dict[str, dict[str, dict]], metrics: Sequence[str], title: str,
                extra: dict[str, dict[str, str]] | None = None) -> str:
    """A plain-text table: one row per method, ``value [95% CI]`` per metric, and optional extra
    columns (already formatted strings). Printed and returned."""
    labels = [METRIC_LABELS.get(m, m) for m in metrics]
    extra_cols = sorted({k for cols in (extra or {}).values() for k in cols})
    header = ["method", *labels, *extra_cols]
    body = []
    for name, row in rows.items():
        cells = [name] + [fmt(row[m]) if m in row else "-" for m in metrics]
        cells += [(extra or {}).get(name, {}).get(c, "-") for c in extra_cols]
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("(value [95% bootstrap CI] over videos)")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The shell command that reproduces this run (``argv``: the script's arguments, default
    ``sys.argv[1:]``), quoted so that empty and spaced arguments survive a copy and paste."""
    return shlex.join(["python", f"examples/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path


# ---- figures ------------------------------------------------------------------------------


def finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a small title and the legend of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def plot_metric_bars(rows: dict[str, dict[str, dict]], metrics: Sequence[str], path: Path, title: str = "") -> Path:
    """:func:`flowception_ext.viz.plot_metric_bars` with this experiment's metric labels."""
    return viz.plot_metric_bars(rows, metrics, path, title, labels=METRIC_LABELS)
