"""Efficiency of Flowception against its baselines (docs/algorithm.md §7; paper §3.4 and App. D).

``python bench/efficiency.py [--quick] [--json PATH] [--plot PATH]`` (or ``flowception bench
efficiency ...`` from a checkout) measures, on one model and
synthetic random videos (costs do not depend on pixel values):

* **training FLOPs** (``torch.utils.flop_counter.FlopCounterMode``, our ops registered) of one
  forward + loss + backward step, Flowception (states from :func:`make_training_state`) vs
  full-sequence (:func:`make_full_sequence_state`) on the same clean videos, split into attention
  and the rest, for ``τ_g ~ U(0, 1)`` (the paper's analysis) and for the configured ``τ_g`` sampler.
  The count of a step depends only on the present lengths, so each distinct length is counted once
  on a real step and the average over many draws (``--draws``) is taken through that table;
* **sampling FLOPs** of whole runs: Flowception, full-sequence at the same per-frame step count,
  autoregressive with and without a KV cache;
* the **analytic model** (:mod:`flowception_ext.costs`) next to each measured ratio;
* **wall-clock** (median of interleaved repeats in this process) of the same steps and runs,
  including a **padded** Flowception step (videos padded to the longest, dense attention mask
  through SDPA, as the reference code does);
* **peak memory**: in a child process, the peak resident set size above the RSS at the start of
  each measurement (``/proc/self/clear_refs`` resets ``VmHWM``; Linux only).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import platform
import statistics
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from flowception_ext import ops
from flowception_ext.baselines import make_full_sequence_state
from flowception_ext.costs import (analytic_sampling_ratio, analytic_train_attention_ratio,
                                   analytic_train_attention_ratio_limit, count_flops, drawn_present_lengths)
from flowception_ext.losses import flowception_loss
from flowception_ext.model import FlowceptionConfig, FlowceptionDiT
from flowception_ext.noising import TrainingState, make_training_state
from flowception_ext.ops.reference import local_frame_mask
from flowception_ext.packing import PackedVideos
from flowception_ext.sampling import sample, sample_autoregressive, sample_full_sequence
from flowception_ext.viz import plot_efficiency


# ---- the padded baseline: dense masks over videos padded to the longest ------------------------


@contextlib.contextmanager
def _dense_attention(real_lengths: Tensor, padded_length: int):
    """Route the model's attention through SDPA with a dense mask over videos padded to
    ``padded_length`` frames: a token sees the real frames of its video within the window;
    padding frames see only themselves (their outputs are discarded)."""
    original = ops.local_frame_attention
    real = torch.arange(padded_length)[None] < real_lengths[:, None]  # (B, n) real frames
    alone = torch.eye(padded_length, dtype=torch.bool)[None] & ~real[:, :, None]

    def attention(q, k, v, cu_seqlens, p, window=-1, scale=None, *, causal=False, **unused):
        b = real_lengths.numel()
        allowed = local_frame_mask(padded_length, 1, window, causal=causal)  # (n, n) frames
        pair = (real[:, :, None] & real[:, None, :] & allowed) | alone
        mask = pair.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None]  # (B, 1, S, S) tokens
        q, k, v = (x.unflatten(0, (b, -1)).transpose(1, 2) for x in (q, k, v))  # (B, H, S, d)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out.transpose(1, 2).flatten(0, 1), None

    ops.local_frame_attention = attention
    try:
        yield
    finally:
        ops.local_frame_attention = original


def padded_forward(model: FlowceptionDiT, videos: PackedVideos, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The model's forward on ``videos`` padded to the longest (dense attention mask, SDPA), as a
    padded implementation computes it; returns the outputs of the real frames only."""
    x, real = videos.to_padded()
    n = real.shape[1]

    def pad(values: Tensor) -> Tensor:
        out = values.new_zeros(real.shape)
        out[real] = values
        return out

    padded = PackedVideos.from_padded(x, torch.ones_like(real), *(pad(v) for v in (videos.times, videos.is_context, videos.insertable)))
    with _dense_attention(videos.lengths.cpu(), n):
        velocity, log_rate = model(padded, labels)
    keep = real.flatten()
    return velocity[keep], None if log_rate is None else log_rate[keep]


def train_step(model: FlowceptionDiT, state: TrainingState, padded: bool = False) -> float:
    """One training step without the optimiser: forward, Flowception loss, backward."""
    velocity, log_rate = padded_forward(model, state.inputs) if padded else model(state.inputs)
    loss = flowception_loss(velocity, log_rate if model.config.rate_head else None, state,
                            velocity_weight=model.velocity_loss_weight(state.inputs.times))
    loss.total.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.total.detach())


# ---- setup ------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, attention: str = "bidirectional") -> FlowceptionDiT:
    config = FlowceptionConfig.from_preset(args.preset, in_channels=3, frame_size=args.frame_size,
                                           patch_size=args.patch, window=args.window, attention=attention)
    torch.manual_seed(args.seed)
    model = FlowceptionDiT(config)
    # adaLN-Zero makes a fresh model an identity on the residual stream; random modulation gives
    # the benchmark the numerics of a trained model (costs are unchanged).
    zero_init = [block.ada for block in model.blocks] + [model.final_ada, model.final_linear, model.rate_head[-1]]
    for layer in zero_init:
        torch.nn.init.normal_(layer.weight, std=0.02)
    return model


def random_videos(num_videos: int, n: int, args: argparse.Namespace, seed: int, min_frames: int | None = None) -> PackedVideos:
    """``num_videos`` random videos of ``n`` frames, or of lengths uniform in ``[min_frames, n]``."""
    g = torch.Generator().manual_seed(seed)
    lo = n if min_frames is None else min_frames
    lengths = torch.randint(lo, n + 1, (num_videos,), generator=g).tolist()
    return PackedVideos.from_list([torch.randn(m, 3, args.frame_size, args.frame_size, generator=g) for m in lengths])


# ---- measurements -----------------------------------------------------------------------------


def training_flops(model: FlowceptionDiT, n: int, draws: int, args: argparse.Namespace) -> dict[str, float]:
    """Average FLOPs of a Flowception training step over ``draws`` states of one ``n``-frame video (for
    ``τ_g ~ U(0, 1)`` and the configured law) and of the full-sequence step on that video.

    A step's count depends only on the present length ``m`` (FLOPs add up over the videos of a batch),
    so ``f(m)`` is counted once per length met, with FlopCounterMode on a real forward + Flowception
    loss + backward of ``m`` present frames, and averaged over the drawn lengths."""
    g = torch.Generator().manual_seed(args.seed + n)
    table: dict[int, dict[str, int]] = {}

    def flops_at(m: int) -> dict[str, int]:
        if m not in table:
            state = make_full_sequence_state(random_videos(1, m, args, args.seed), generator=g)
            table[m] = count_flops(lambda: train_step(model, state))
        return table[m]

    out: dict[str, float] = {"full_attention": flops_at(n)["attention"], "full_total": flops_at(n)["total"]}
    for law in ("uniform_tau", "configured"):
        lengths = Counter(drawn_present_lengths(n, draws, law, g).tolist())
        for part in ("attention", "total"):
            mean = sum(c * flops_at(m)[part] for m, c in lengths.items()) / draws
            out[f"flowception_{law}_{part}"] = mean
            out[f"{part}_ratio_{law}"] = out[f"full_{part}"] / mean
        out[f"mean_present_fraction_{law}"] = sum(c * m for m, c in lengths.items()) / draws / n
    return out


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each function over ``repeats`` rounds, run interleaved (after one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values() if warmup else ():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def training_batch(model: FlowceptionDiT, n: int, args: argparse.Namespace):
    """``args.batch`` clean videos of ``n`` frames (of ``[ceil(min_frames_fraction * n), n]`` frames when
    the fraction is below 1), ``args.states`` Flowception states of them (configured law) and their
    full-sequence states: the steps timed and memory-measured."""
    videos = random_videos(args.batch, n, args, args.seed + 1, min_frames=math.ceil(args.min_frames_fraction * n))
    g = torch.Generator().manual_seed(args.seed + 2)
    fc = [make_training_state(videos, generator=g) for _ in range(args.states)]
    full = [make_full_sequence_state(videos, generator=g) for _ in range(args.states)]
    return {"flowception": lambda: [train_step(model, s) for s in fc],
            "full_sequence": lambda: [train_step(model, s) for s in full],
            "padded": lambda: [train_step(model, s, padded=True) for s in fc]}, fc, full


def training_timing(model: FlowceptionDiT, n: int, args: argparse.Namespace, padded: bool) -> dict[str, float]:
    steps, fc, full = training_batch(model, n, args)
    if not padded:
        steps.pop("padded")
    t = median_times(steps, args.repeats)
    fc_flops = sum(count_flops(lambda: train_step(model, s))["total"] for s in fc)
    full_flops = sum(count_flops(lambda: train_step(model, s))["total"] for s in full)
    out = {f"train_seconds_{k}": v / args.states for k, v in t.items()}
    out["train_wallclock_ratio"] = t["full_sequence"] / t["flowception"]
    out["train_total_flop_ratio_timed_states"] = full_flops / fc_flops
    out["present_lengths_timed_states"] = [s.inputs.lengths.tolist() for s in fc]
    out["clean_lengths_timed_states"] = full[0].inputs.lengths.tolist()
    if padded:
        out["padded_over_packed_wallclock"] = t["padded"] / t["flowception"]
        out["train_flops_padded_total"] = sum(count_flops(lambda: train_step(model, s, padded=True))["total"] for s in fc) / args.states
    return out


def sampling_runs(model: FlowceptionDiT, causal: FlowceptionDiT, n: int, args: argparse.Namespace,
                  ar_nocache: bool) -> dict[str, Callable[[], object]]:
    steps = args.steps

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(args.seed + 3)

    runs = {
        # the random order inserts exactly n − 1 frames at κ⁻¹(U) times: the law of a trained model
        "flowception": lambda: sample(model, steps=steps, order="random", target_length=n, max_frames=None,
                                      generator=gen(), progress=False),
        "full_sequence": lambda: sample_full_sequence(model, num_frames=n, steps=steps, num_videos=1,
                                                   generator=gen(), progress=False),
        "ar_cache": lambda: sample_autoregressive(causal, num_frames=n, steps_per_frame=steps, use_cache=True, num_videos=1,
                                                  generator=gen(), progress=False),
    }
    if ar_nocache:
        runs["ar_nocache"] = lambda: sample_autoregressive(model, num_frames=n, steps_per_frame=steps,
                                                           use_cache=False, num_videos=1, generator=gen(),
                                                           progress=False)
    return runs


def sampling_measure(model: FlowceptionDiT, causal: FlowceptionDiT, n: int, args: argparse.Namespace) -> dict:
    runs = sampling_runs(model, causal, n, args, ar_nocache=n <= args.ar_max_n)
    out: dict[str, float] = {}
    for name, fn in runs.items():
        f = count_flops(fn)
        out[f"sampling_flops_{name}"], out[f"sampling_attention_flops_{name}"] = f["total"], f["attention"]
    for name, sec in median_times(runs, args.sampling_repeats, warmup=False).items():  # counted runs warmed up
        out[f"sampling_seconds_{name}"] = sec
    out["sampling_flop_ratio"] = out["sampling_flops_full_sequence"] / out["sampling_flops_flowception"]
    out["sampling_attention_flop_ratio"] = (out["sampling_attention_flops_full_sequence"]
                                            / out["sampling_attention_flops_flowception"])
    out["sampling_wallclock_ratio"] = out["sampling_seconds_full_sequence"] / out["sampling_seconds_flowception"]
    if "sampling_flops_ar_nocache" in out:
        out["ar_nocache_over_flowception_flops"] = out["sampling_flops_ar_nocache"] / out["sampling_flops_flowception"]
        out["ar_nocache_over_flowception_wallclock"] = (out["sampling_seconds_ar_nocache"]
                                                        / out["sampling_seconds_flowception"])
    return out


# ---- peak memory (child process) -------------------------------------------------------------


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_mib(fn: Callable[[], object]) -> float:
    """Peak RSS above the RSS at the start (MiB): ``VmHWM`` reset through ``/proc/self/clear_refs``."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def _memory_child(args: argparse.Namespace, n: int, kind: str, name: str) -> float:
    torch.set_num_threads(args.threads)
    model, causal = build_model(args), build_model(args, "causal")
    if kind == "train":
        fn = training_batch(model, n, args)[0][name]
    else:
        fn = sampling_runs(model, causal, n, args, ar_nocache=False)[name]
    return _peak_rss_mib(fn)


def peak_memory(args: argparse.Namespace, n: int) -> dict[str, float]:
    """Peak RSS each training step / sampling run adds, each measured in a fresh process (so no
    measurement reuses memory another one freed, and each pays its own first-call costs)."""
    if not Path("/proc/self/clear_refs").exists():
        return {}
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for kind, names in (("sampling", ("flowception", "full_sequence")), ("train", ("flowception", "full_sequence", "padded"))):
        for name in names:
            with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
                out[f"peak_rss_mib_{kind}_{name}"] = pool.submit(_memory_child, args, n, kind, name).result()
    return out


# ---- report ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/efficiency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model size preset (default tiny)")
    p.add_argument("--frame-size", type=int, default=32, help="square frame side (default 32)")
    p.add_argument("--patch", type=int, default=4, help="patch size (default 4: L = 64 tokens per frame)")
    p.add_argument("--window", type=int, default=None, help="attention window in frames (default: all frames)")
    p.add_argument("--n", type=int, default=32, help="frames for the headline figures (default 32)")
    p.add_argument("--sweep", default="8,16,32,64,128", help="frame counts for the per-n tables and the plot")
    p.add_argument("--train-max-n", type=int, default=64, help="largest n for training measurements")
    p.add_argument("--ar-max-n", type=int, default=32, help="largest n for the autoregressive run without cache")
    p.add_argument("--padded-max-n", type=int, default=64, help="largest n for the padded step (dense masks)")
    p.add_argument("--draws", type=int, default=4000, help="training states averaged per FLOP ratio")
    p.add_argument("--batch", type=int, default=4, help="videos per timed training step")
    p.add_argument("--states", type=int, default=2, help="training states per timed round")
    p.add_argument("--min-frames-fraction", type=float, default=1.0,
                   help="timed training batches: clean lengths uniform in [ceil(f * n), n] (default 1: all n frames)")
    p.add_argument("--steps", type=int, default=8, help="sampling steps per frame (1/h)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds of the training steps")
    p.add_argument("--sampling-repeats", type=int, default=1, help="timed rounds of the sampling runs")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="reduced sizes (under 3 minutes)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child process")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--plot", type=Path, help="write the FLOPs/time-vs-n plot here (PNG)")
    if p.parse_known_args(argv)[0].quick:  # reduced defaults; explicit options still win
        p.set_defaults(frame_size=16, n=16, sweep="8,16", draws=2000, train_max_n=16, ar_max_n=16, padded_max_n=16,
                       batch=2, states=1, steps=4, repeats=2)
    args = p.parse_args(argv)
    args.sweep = sorted({int(v) for v in args.sweep.split(",")} | {args.n})
    if not 0 < args.min_frames_fraction <= 1:
        p.error(f"--min-frames-fraction must be in (0, 1], got {args.min_frames_fraction}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, causal = build_model(args), build_model(args, "causal")
    causal.load_state_dict(model.state_dict())
    cfg = model.config
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "config": {"preset": args.preset, "frame_size": args.frame_size, "patch": args.patch,
                   "tokens_per_frame": cfg.tokens_per_frame, "window": args.window, "n": args.n,
                   "draws": args.draws, "batch": args.batch, "steps_per_frame": args.steps,
                   "min_frames_fraction": args.min_frames_fraction,
                   "time_law_configured": "logit_normal(0, 1) s, tau_g = s * tau_max"},
        "per_n": {},
    }
    for n in args.sweep:
        row: dict = {}
        if n <= args.train_max_n:
            f = training_flops(model, n, args.draws, args)
            row.update({f"train_flops_{k}" if "ratio" not in k and "fraction" not in k else k: v for k, v in f.items()})
            row["attention_ratio_uniform_tau_analytic"] = analytic_train_attention_ratio(n, "uniform_tau")
            row["attention_ratio_configured_analytic"] = analytic_train_attention_ratio(n, "logit_normal")
            row.update(training_timing(model, n, args, padded=n <= args.padded_max_n))
        row.update(sampling_measure(model, causal, n, args))
        a = analytic_sampling_ratio(n, args.steps)
        row.update({f"sampling_analytic_{k}": v for k, v in a.items()})
        results["per_n"][str(n)] = row
        print(f"n={n}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
        if args.json:  # partial results survive an interrupted run
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, default=str))

    head = results["per_n"][str(args.n)]
    results.update({
        "train_attn_flop_ratio_uniform": head["attention_ratio_uniform_tau"],
        "train_attn_flop_ratio_uniform_analytic": head["attention_ratio_uniform_tau_analytic"],
        "train_attn_flop_ratio_uniform_analytic_limit": analytic_train_attention_ratio_limit("uniform_tau"),
        "train_attn_flop_ratio_configured": head["attention_ratio_configured"],
        "train_attn_flop_ratio_configured_analytic": head["attention_ratio_configured_analytic"],
        "train_attn_flop_ratio_configured_analytic_limit": analytic_train_attention_ratio_limit("logit_normal"),
        "train_total_flop_ratio_configured": head["total_ratio_configured"],
        "train_total_flop_ratio_uniform": head["total_ratio_uniform_tau"],
        "train_wallclock_ratio": head["train_wallclock_ratio"],
        "train_total_flop_ratio_timed_states": head["train_total_flop_ratio_timed_states"],
        "padded_over_packed_wallclock": head.get("padded_over_packed_wallclock"),
        "sampling_flop_ratio": head["sampling_flop_ratio"],
        "sampling_attention_flop_ratio": head["sampling_attention_flop_ratio"],
        "sampling_flop_ratio_analytic": head["sampling_analytic_attention"],
        "sampling_flop_ratio_analytic_tokens": head["sampling_analytic_tokens"],
        "sampling_flop_ratio_paper": 1.5,
        "sampling_wallclock_ratio": head["sampling_wallclock_ratio"],
    })
    if not args.no_memory:
        results["peak_memory"] = peak_memory(args, args.n)
    results["seconds"] = time.perf_counter() - started

    print(f"\nheadline (n={args.n}, L+1={cfg.tokens_per_frame} tokens/frame, preset {args.preset}):")
    for k, v in results.items():
        if k not in ("per_n", "machine", "config"):
            print(f"  {k}: {json.dumps(v) if isinstance(v, dict) else (f'{v:.4g}' if isinstance(v, float) else v)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        plot_efficiency(results, args.plot)
    return 0


if __name__ == "__main__":  # guard: the peak-memory child processes re-import this script
    raise SystemExit(main())
