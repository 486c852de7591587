"""Shared pieces of the MovingShapes experiments (``insertion_orders.py``, ``paradigms.py``,
``interpolation.py``): command line, data, training to a step or FLOP budget, sampling, metrics
with bootstrap confidence intervals, and the JSON/table output.

Defaults: MovingShapes at 16×16 with one shape per video and 8–16 frames, the ``tiny`` preset
with 4×4 patches (16 patch tokens + 1 rate token per frame), AdamW at 2e-3, 128 frames per batch.
They were chosen so a full run fits in 15–30 minutes on one CPU thread; with three shapes, 20
frames or a lower rate, a 2500-3000-step model lost the shapes in most generated frames.

Metrics, per generated video (see :func:`video_metrics`):

* ``consistent``: the dataset checker's strict verdict (:func:`~flowception_ext.data.consistency`,
  every frame within 0.3 px of the constant-velocity prediction and masses within 25 %). At the
  model sizes that fit on a CPU it is close to 0 for every method, so it is reported but does not
  rank anything;
* ``median_error``: the median over frames of the checker's per-frame prediction error in pixels,
  with missing shapes (``inf``) and larger errors clipped to the frame width;
* ``frac_frames_le_1px``: the fraction of frames whose error is at most 1 px;
* ``frechet``: a Fréchet distance between Gaussians fitted to simple per-video statistics
  (:func:`video_features`: shape count, mass, speed, acceleration, mass variation, haze) of the
  generated videos and of the held-out real videos they were conditioned on, after standardising
  each statistic by the real videos' mean and spread. Lengths are left out (reported apart).

Videos of fewer than 3 frames cannot be checked and count as failures (error = frame width).

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
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

import flowception_ext as fe
from flowception_ext.checkpoint import save_tensors
from flowception_ext.data import MovingShapes, consistency
from flowception_ext.efficiency import count_flops
from flowception_ext.noising import NoisingConfig
from flowception_ext.training import finished_checkpoint

__all__ = [
    "make_parser", "parse_args", "setup", "datasets", "reference_videos", "model_config", "train_model", "train_flops_per_step",
    "sample_flowception", "video_metrics", "video_features", "frechet_distance", "bootstrap_ci",
    "summarise", "paired_difference", "error_curve", "drift_slope", "print_table", "fmt", "write_json", "Timer",
    "save_samples", "pyplot", "finish_axes", "save_figure", "plot_frame_rows", "plot_metric_bars",
]

METRICS = ("consistent", "median_error", "frac_frames_le_1px", "frechet", "length")
METRIC_LABELS = {
    "consistent": "strict consistent",
    "median_error": "median err px (lower)",
    "frac_frames_le_1px": "frames <=1px (higher)",
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
                                            attention=attention, rate_head=rate_head)


def _train_config(args: argparse.Namespace, steps: int, out_dir: Path, objective: str, noising: NoisingConfig,
                  progress: bool = True) -> fe.TrainConfig:
    return fe.TrainConfig(steps=steps, lr=args.lr, warmup_steps=min(50, steps // 10), frames_per_batch=args.frames_per_batch,
                          seed=args.seed, objective=objective, noising=noising, out_dir=str(out_dir),
                          checkpoint_every=steps, log_every=max(1, min(50, steps)), progress=progress)


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
    last = trainer.fit()
    ema = fe.FlowceptionDiT(model.config)
    ema.load_state_dict(trainer.ema)  # float32 copies; load_state_dict casts to the parameters' dtype
    ema.eval()
    record = {"objective": objective, "attention": attention, "steps": steps, "seconds": round(float(timer), 1),
              "final_loss": round(last.get("loss", math.nan), 5),
              "parameters": sum(p.numel() for p in model.parameters())}
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
                       max_frames: int | None = None, batch: int = 64) -> dict:
    """Flowception sampling of one video per context, in batches. With a fixed ``order``,
    ``target_lengths`` gives each video's length; videos are grouped by length (``sample`` takes
    one ``target_length`` per call). Returns the videos (in context order) and their records."""
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
                            progress=False)
            for j, i in enumerate(idx):
                videos[i], is_context[i] = out.videos[j], out.is_context[j]
                insert_time[i], hit[i] = out.insert_time[j], out.max_frames_hit[j]
    return {"videos": videos, "is_context": is_context, "insert_time": insert_time, "max_frames_hit": hit}


# ---- metrics ------------------------------------------------------------------------------


def clipped_errors(video: Tensor) -> np.ndarray:
    """Per-frame consistency error in pixels, ``inf`` (missing shape) and large values clipped to the
    frame width. Videos of fewer than 3 frames cannot be checked (the checker scores them 0): they
    get the cap on every frame, i.e. count as failures (the data has no such videos)."""
    cap = float(video.shape[-1])
    if video.shape[0] < 3:
        return np.full(video.shape[0], cap)
    errors = consistency(video).errors.numpy()
    return np.minimum(np.nan_to_num(errors, nan=cap, posinf=cap), cap)


def video_metrics(videos: Sequence[Tensor]) -> dict[str, np.ndarray]:
    """Per-video arrays: strict verdict, median clipped error, fraction of frames within 1 px, length."""
    out: dict[str, list] = {"consistent": [], "median_error": [], "frac_frames_le_1px": [], "length": []}
    for v in videos:
        result = consistency(v)
        errors = clipped_errors(v)
        out["consistent"].append(float(result.is_consistent and v.shape[0] >= 3))
        out["median_error"].append(float(np.median(errors)))
        out["frac_frames_le_1px"].append(float(np.mean(errors <= 1.0)))
        out["length"].append(float(v.shape[0]))
    return {k: np.asarray(v) for k, v in out.items()}


FEATURES = ("shapes", "mass", "speed", "acceleration", "mass_variation", "haze")


def video_features(video: Tensor) -> np.ndarray:
    """Statistics of one ``[n, 3, H, W]`` video in ``[-1, 1]`` (see :data:`FEATURES`), averaged over its
    shapes (one per channel): the number of channels holding a shape, the shape's mass (pixels),
    its mean speed and acceleration (pixels/frame, from weighted centroids), the spread of its
    mass over frames (relative) and the fraction of pixels that are neither background nor shape."""
    x = ((video.detach().double().numpy() + 1) / 2).clip(0, 1)                 # (n, 3, H, W) intensity
    n, _, h, w = x.shape
    haze = float(((x > 0.15) & (x < 0.85)).mean())
    weight = np.clip((x - 0.25) / 0.75, 0, 1)                                   # haze below 0.25 ignored
    ys, xs = np.arange(h), np.arange(w)
    stats = []
    for c in range(3):
        if x[:, c].max() < 0.5:
            continue
        mass = weight[:, c].sum((1, 2))                                         # (n,)
        present = mass > 0.5
        if not present.any():  # only faint traces in this channel: no shape
            continue
        safe = np.where(present, mass, 1.0)
        centre = np.stack([weight[:, c].sum(1) @ xs, weight[:, c].sum(2) @ ys], 1) / safe[:, None]
        step = np.diff(centre, axis=0)
        both = present[1:] & present[:-1]
        speed = np.linalg.norm(step[both], axis=1).mean() if both.any() else 0.0
        both2 = both[1:] & both[:-1]
        accel = np.linalg.norm(np.diff(step, axis=0)[both2], axis=1).mean() if both2.any() else 0.0
        m = mass[present]
        stats.append([m.mean(), speed, accel, m.std() / max(m.mean(), 1e-9)])
    per_shape = np.mean(stats, axis=0) if stats else np.zeros(4)
    return np.array([len(stats), *per_shape, haze])


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``:
    ``|μa − μb|² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("frechet_distance needs finite features")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def standardiser(real: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map features to units of the real videos' spread (constant features keep unit scale)."""
    mean, std = real.mean(0), real.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    return lambda f: (f - mean) / std


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, reps: int, rng: np.random.Generator,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items resampled with replacement."""
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def _entry(value: float, ci: tuple[float, float]) -> dict:
    return {"value": float(value), "ci95": [float(ci[0]), float(ci[1])]}


def summarise(per_video: dict[str, np.ndarray], features: np.ndarray, real_features: np.ndarray,
              reps: int, seed: int) -> dict[str, dict]:
    """Mean of each per-video metric and the Fréchet distance to the real features, each with a CI."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, values in per_video.items():
        out[name] = _entry(values.mean(), bootstrap_ci(lambda i: values[i].mean(), len(values), reps, rng))
    norm = standardiser(real_features)
    gen, real = norm(features), norm(real_features)
    value = frechet_distance(gen, real)
    draws = [frechet_distance(gen[rng.integers(0, len(gen), len(gen))], real[rng.integers(0, len(real), len(real))])
             for _ in range(reps)]
    out["frechet"] = _entry(value, (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))))
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, reps: int, seed: int) -> dict:
    """Mean of ``a − b`` over the same videos, with a paired bootstrap interval."""
    diff = a - b
    rng = np.random.default_rng(seed)
    return _entry(diff.mean(), bootstrap_ci(lambda i: diff[i].mean(), len(diff), reps, rng))


def error_curve(videos: Sequence[Tensor], max_index: int, reps: int, seed: int) -> dict[str, list]:
    """Per frame index ``0..max_index-1``: the mean clipped error over the videos that have that frame,
    its bootstrap interval (over those videos) and how many videos it averages."""
    errors = [clipped_errors(v) for v in videos]
    rng = np.random.default_rng(seed)
    mean, lo, hi, count = [], [], [], []
    for f in range(max_index):
        values = np.array([e[f] for e in errors if e.shape[0] > f])
        count.append(int(values.size))
        if values.size == 0:
            mean.append(math.nan), lo.append(math.nan), hi.append(math.nan)
            continue
        a, b = bootstrap_ci(lambda i: values[i].mean(), values.size, reps, rng)
        mean.append(float(values.mean())), lo.append(a), hi.append(b)
    return {"mean": mean, "ci95_low": lo, "ci95_high": hi, "videos": count}


def drift_slope(videos: Sequence[Tensor], reps: int, seed: int, first: int = 2) -> dict:
    """Least-squares slope (px per frame) of the clipped error against the frame index, pooled over
    the videos' frames ``>= first`` (earlier frames are predicted backwards), bootstrap over videos."""
    errors = [clipped_errors(v) for v in videos]

    def slope(idx: np.ndarray) -> float:
        f = np.concatenate([np.arange(first, errors[i].shape[0]) for i in idx])
        e = np.concatenate([errors[i][first:] for i in idx])
        if f.size < 2 or np.ptp(f) == 0:
            return math.nan
        return float(np.polyfit(f, e, 1)[0])

    rng = np.random.default_rng(seed)
    return _entry(slope(np.arange(len(errors))), bootstrap_ci(slope, len(errors), reps, rng))


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


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path


# ---- figures ------------------------------------------------------------------------------


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a small title and the legend of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (PNG at 110 dpi) and close a pyplot figure."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def plot_frame_rows(rows: Sequence[dict], path: Path, title: str = "", max_columns: int = 24) -> Path:
    """One row of frames per entry of ``rows`` (keys ``label``, ``frames [n, 3, H, W]`` in [-1, 1] and
    optionally ``insert_time [n]`` and ``is_context [n]``): context frames get a dashed black border,
    generated ones a border coloured by their insertion time (printed above them), as in the
    paper's Figures 5-6. Rows longer than ``max_columns`` are cut (and say so)."""
    plt = pyplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    columns = min(max(r["frames"].shape[0] for r in rows), max_columns)
    fig, axes = plt.subplots(len(rows), columns, figsize=(0.9 * columns + 1.5, 1.15 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        frames = ((row["frames"].clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        times, ctx = row.get("insert_time"), row.get("is_context")
        cut = frames.shape[0] > columns
        axes[r, 0].set_ylabel(row["label"] + (" (cut)" if cut else ""), rotation=0, ha="right", va="center",
                              fontsize=8)
        for c in range(columns):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= frames.shape[0]:
                ax.set_frame_on(False)
                continue
            ax.imshow(frames[c], interpolation="nearest")
            if ctx is not None and bool(ctx[c]):
                colour, style, text = "black", "--", "ctx"
            elif times is not None:
                colour, style, text = cmap(float(times[c])), "-", f"{float(times[c]):.2f}"
            else:
                colour, style, text = "lightgrey", "-", ""
            for spine in ax.spines.values():
                spine.set(edgecolor=colour, linestyle=style, linewidth=2.5)
            if text:
                ax.set_title(text, fontsize=6, pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_metric_bars(rows: dict[str, dict[str, dict]], metrics: Sequence[str], path: Path, title: str = "") -> Path:
    """One panel per metric: a bar per method with its 95 % interval."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    names = list(rows)
    for ax, metric in zip(axes[0], metrics):
        values = [rows[n][metric]["value"] for n in names]
        # a Fréchet interval can sit above its point estimate (see the module docstring): clip at 0
        lo = [max(0.0, rows[n][metric]["value"] - rows[n][metric]["ci95"][0]) for n in names]
        hi = [max(0.0, rows[n][metric]["ci95"][1] - rows[n][metric]["value"]) for n in names]
        ax.bar(range(len(names)), values, yerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
