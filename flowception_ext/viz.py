"""Figures: sampled videos' insertion order (as in the paper's Figures 5–6), length histograms,
rows of frames, metrics with their intervals.

Every figure is drawn on its own Agg canvas (:func:`new_figure`; no pyplot, no global backend
change), so figures work headless and leave the caller's matplotlib state alone. Scripts draw
their own figures the same way: ``fig = new_figure(w, h)``, ``ax = fig.add_subplot()``, then
:func:`save_figure`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from .io import to_uint8
from .sampling import SampleOutput

__all__ = ["new_figure", "plot_frame_rows", "plot_insertion_order", "plot_length_histogram", "plot_metric_bars",
           "save_figure"]


def new_figure(width: float, height: float):
    """A matplotlib ``Figure`` of ``width × height`` inches on its own Agg canvas (pyplot untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_insertion_order(output: SampleOutput, path: str | Path, video: int = 0, *,
                         value_range: tuple[float, float] = (-1.0, 1.0), columns: int = 12,
                         cmap: str = "viridis") -> Path:
    """Draw one sampled video's frames in their final order, each framed in the colour of its
    insertion time ``t_g`` (and labelled with it); context frames get a dashed black frame and
    the label ``ctx``, starting frames ``start``. Frames wrap after ``columns`` per row.

    Args:
        output: the :class:`~flowception_ext.sampling.SampleOutput` of :func:`~flowception_ext.sampling.sample`.
        path: the image to write (format from the suffix, e.g. ``.png``).
        video: which video of the batch.
        value_range: pixel values mapped to black and white (frames must have 1 or 3 channels).
        columns: frames per row.
        cmap: matplotlib colour map of the insertion times.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if not isinstance(output, SampleOutput):
        raise TypeError(f"output must be a SampleOutput, got {type(output).__name__}")
    if not 0 <= video < len(output.videos):
        raise ValueError(f"video must be in [0, {len(output.videos)}), got {video}")
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an int >= 1, got {columns!r}")
    pixels = to_uint8(output.videos[video], value_range)
    times = output.insert_time[video].tolist()
    steps = output.insert_step[video].tolist()
    context = output.is_context[video].tolist()
    n = len(times)
    cols = min(n, columns)
    rows = math.ceil(n / cols)
    colours, norm = colormaps[cmap], Normalize(0.0, 1.0)

    fig = new_figure(1.3 * cols + 1.2, 1.5 * rows + 0.4)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [0.15], wspace=0.15, hspace=0.35)
    for i in range(n):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        image = pixels[i]
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if context[i]:
            colour, style, label = "black", "--", "ctx"
        else:
            colour, style = colours(norm(times[i])), "-"
            label = "start" if steps[i] < 0 else f"{times[i]:.2f}"
        for spine in ax.spines.values():
            spine.set(edgecolor=colour, linestyle=style, linewidth=3)
        ax.set_title(label, fontsize=8)
    bar = fig.add_subplot(grid[:, cols])
    fig.colorbar(ScalarMappable(norm=norm, cmap=colours), cax=bar, label="insertion time $t_g$")
    return save_figure(fig, path)


def plot_length_histogram(lengths: Sequence[int] | Tensor, path: str | Path,
                          reference: Sequence[int] | Tensor | None = None, *, title: str | None = None) -> Path:
    """Histogram of video lengths (one bar per length, as fractions), optionally beside a reference
    distribution (e.g. the training data's lengths), with both means in the legend."""
    samples = _as_lengths(lengths, "lengths")
    ref = None if reference is None else _as_lengths(reference, "reference")
    everything = samples if ref is None else np.concatenate([samples, ref])
    bins = np.arange(everything.min(), everything.max() + 2) - 0.5

    fig = new_figure(6.0, 3.5)
    ax = fig.add_subplot()
    ax.hist(samples, bins=bins, density=True, alpha=0.6, label=f"sampled (mean {samples.mean():.2f}, n={samples.size})")
    if ref is not None:
        ax.hist(ref, bins=bins, density=True, histtype="step", linewidth=2, color="black",
                label=f"reference (mean {ref.mean():.2f}, n={ref.size})")
    ax.set_xlabel("frames per video")
    ax.set_ylabel("fraction of videos")
    ax.set_title(title or "video lengths")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` (format from the suffix), trimmed to its contents; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _as_lengths(values, name: str) -> np.ndarray:
    array = np.asarray(values.cpu() if isinstance(values, Tensor) else list(values))
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer) or (array < 0).any():
        raise ValueError(f"{name} must be a non-empty 1-D sequence of non-negative ints")
    return array


def plot_frame_rows(rows: Sequence[dict], path: str | Path, title: str = "", max_columns: int = 24) -> Path:
    """One row of frames per entry of ``rows`` (keys ``label``, ``frames [n, 3, H, W]`` in [-1, 1] and
    optionally ``insert_time [n]`` and ``is_context [n]``): context frames get a dashed black border,
    generated ones a border coloured by their insertion time (printed above them), as in the
    paper's Figures 5-6. Rows longer than ``max_columns`` are cut (and say so)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    columns = min(max(r["frames"].shape[0] for r in rows), max_columns)
    fig = new_figure(0.9 * columns + 1.5, 1.15 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), columns, squeeze=False)
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
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_metric_bars(rows: dict[str, dict[str, dict]], metrics: Sequence[str], path: str | Path, title: str = "",
                     labels: dict[str, str] | None = None) -> Path:
    """One panel per metric: a bar per method with its 95 % interval. ``rows[method][metric]`` is an
    :func:`~flowception_ext.eval.estimate` (``{"value", "ci95": [lo, hi]}``); ``labels`` titles the panels."""
    fig = new_figure(3.2 * len(metrics), 3.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)
    names = list(rows)
    for ax, metric in zip(axes[0], metrics):
        values = [rows[n][metric]["value"] for n in names]
        # a bootstrap interval can sit above its point estimate (a Fréchet distance's does): clip at 0
        lo = [max(0.0, rows[n][metric]["value"] - rows[n][metric]["ci95"][0]) for n in names]
        hi = [max(0.0, rows[n][metric]["ci95"][1] - rows[n][metric]["value"]) for n in names]
        ax.bar(range(len(names)), values, yerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title((labels or {}).get(metric, metric), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def plot_efficiency(results: dict, path: str | Path) -> Path:
    """The efficiency study's figure (``bench/efficiency.py``): sampling FLOPs and seconds of whole
    runs, and training-step seconds with the full-sequence / Flowception FLOP ratio, against the
    frame count ``n`` (both axes logarithmic). ``results`` is the harness's JSON (``per_n`` rows)."""
    per_n = results["per_n"]
    ns = sorted(int(k) for k in per_n)
    rows = [per_n[str(n)] for n in ns]

    def series(ax, key: str, label: str, scale: float = 1.0) -> None:
        xs = [(n, row[key]) for n, row in zip(ns, rows) if key in row]
        if xs:
            ax.plot([x for x, _ in xs], [y / scale for _, y in xs], "o-", label=label)

    fig = new_figure(16, 4.5)
    axes = fig.subplots(1, 3)
    for key, label in (("flowception", "Flowception"), ("full_sequence", "full-sequence"),
                       ("ar_cache", "AR + KV cache"), ("ar_nocache", "AR, no cache")):
        series(axes[0], f"sampling_flops_{key}", label, 1e9)
        series(axes[1], f"sampling_seconds_{key}", label)
    for key, label in (("flowception", "Flowception (packed)"), ("full_sequence", "full-sequence"),
                       ("padded", "Flowception (padded)")):
        series(axes[2], f"train_seconds_{key}", label)
    ratio = axes[2].twinx()
    xs = [(n, row) for n, row in zip(ns, rows) if "train_flops_full_total" in row]
    ratio.plot([n for n, _ in xs], [r["train_flops_full_total"] / r["train_flops_flowception_configured_total"]
                                    for _, r in xs], "k--", label="FLOP ratio full/FC")
    ratio.set_ylabel("training FLOP ratio full / Flowception")
    ratio.legend(fontsize=8, loc="lower right")
    titles = ("sampling GFLOPs (whole run)", "sampling seconds (whole run)", "training step seconds (per batch)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames n")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
