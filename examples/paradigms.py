"""Flowception vs full-sequence vs autoregressive (paper Tables 1 and 4) on MovingShapes
image-to-video, at the same backbone and the same training FLOP budget.

Four models of the same preset are trained on MovingShapes image-to-video (frame 0 given):

* ``flowception``: the Flowception objective (bidirectional attention, rate head);
* ``full_sequence``: full-sequence flow matching (all frames, one shared time);
* ``ar_cache``: autoregressive teacher forcing with frame-causal attention, sampled with a KV cache;
* ``ar_nocache``: autoregressive with bidirectional attention, sampled by recomputing the prefix.

Equal training compute: the FLOPs of one real training step of each objective are counted
(``FlopCounterMode`` over ``--flop-probe`` steps, forward + backward) and each baseline gets
``round(train_steps · F_flowception / F_baseline)`` steps, so every model has the FLOP budget of
``train_steps`` Flowception steps.

Sampling: each held-out video's first frame is continued with ``--sample-steps`` denoising
steps per frame for every method. Flowception chooses the length; the baselines are given the
held-out video's true length (a fixed length chosen before sampling, as they need).

Reported per method, with bootstrap 95 % CIs: the :mod:`flowception_ext.eval.shapes` metrics (strict
consistency, median per-frame error, fraction of frames within 1 px, fraction of videos whose
shape fades away or changes colour, Fréchet distance of motion statistics to the held-out
videos), the **error-accumulation curve** (mean per-frame consistency
error at each frame index, plotted with its CI band in ``paradigms_consistency.png``) and its
least-squares slope (px per frame: drift), sampling FLOPs per video and per frame (counted on
the first ``--flop-videos`` videos) and sampling wall time per video (the whole run).

Also: the **context probe** of each model (does it read the given first frame?
:func:`shapes_common.context_probe`), and **quality against sampling FLOPs** (the paper's Fig. 11):
Flowception and AR with cache sampled again at each per-frame step count of ``--step-sweep``
(``paradigms_step_sweep.png``). ``--methods`` trains and samples a subset of the four.

    python examples/paradigms.py                    # full run (about 35 min on 1 thread)
    python examples/paradigms.py --prediction clean --min-length 24 --max-length 32 --step-sweep "" --out runs/paradigms_32
    python examples/paradigms.py --quick --out /tmp/pd     # CI check (under 3 min)

Outputs in ``--out``: ``results.json``, ``table.txt`` (with the per-frame curves),
``paradigms_consistency.png``, ``paradigms_step_sweep.png``, ``samples.safetensors`` (the
generated videos), the training runs (``train/<method>/``; a rerun with the same configuration
reuses their final checkpoints and continues an interrupted one from its last).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib.ticker
import numpy as np
import torch

import flowception_ext as fe
from flowception_ext import viz
from flowception_ext.costs import count_flops
from flowception_ext.eval import drift_slope, error_curve, summarise, video_features, video_metrics
from flowception_ext.noising import NoisingConfig
from flowception_ext.sampling import sample_autoregressive, sample_full_sequence

import shapes_common as sc  # the shapes experiments' runner, beside this script

# name -> (training objective, attention, rate head)
METHODS = {
    "flowception": ("flowception", "bidirectional", True),
    "full_sequence": ("full_sequence", "bidirectional", False),
    "ar_cache": ("autoregressive", "causal", False),
    "ar_nocache": ("autoregressive", "bidirectional", False),
}
QUICK = dict(train_steps=40, train_videos=256, num_videos=10, sample_steps=6, bootstrap=200, max_length=12,
             flop_probe=3, flop_videos=2, step_sweep="2,4")
SWEEP_METHODS = ("flowception", "ar_cache")  # the paper's Fig. 11: Flowception against AR with a KV cache
SWEEP_METRICS = ("median_error", "frac_frames_le_1px", "frechet")


def main(argv: list[str] | None = None) -> dict:
    parser = sc.make_parser(__doc__, out="runs/paradigms", train_steps=1800, num_videos=96)
    parser.add_argument("--flop-probe", type=int, default=12, help="training steps counted per objective")
    parser.add_argument("--flop-videos", type=int, default=8, help="videos whose sampling FLOPs are counted")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {', '.join(METHODS)} (Flowception's FLOPs set the budget either way)")
    parser.add_argument("--step-sweep", default="8,16,32,64",
                        help="per-frame step counts at which Flowception and AR with cache are sampled again "
                             "(quality against sampling FLOPs, the paper's Fig. 11); '' skips it")
    args = sc.parse_args(parser, argv, QUICK)
    if args.flop_probe < 1 or args.flop_videos < 1:
        raise ValueError("--flop-probe and --flop-videos must be >= 1")
    try:
        args.step_sweep = [int(s) for s in args.step_sweep.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--step-sweep must be comma-separated integers, got {args.step_sweep!r}") from None
    if any(s < 1 for s in args.step_sweep):
        raise ValueError(f"--step-sweep steps must be >= 1, got {args.step_sweep}")
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    if not names or set(names) - set(METHODS):
        raise ValueError(f"--methods must be a comma-separated subset of {', '.join(METHODS)}, got {args.methods!r}")
    methods = {name: METHODS[name] for name in names}
    out = sc.setup(args)
    timer = sc.Timer()
    train, test = sc.datasets(args)
    real = [test[i] for i in range(len(test))]
    noising = NoisingConfig(tasks={"image_to_video": 1.0})

    print(f"counting training FLOPs per step ({args.flop_probe} probe steps per objective) ...", flush=True)
    flops = {name: sc.train_flops_per_step(args, train, noising=noising, objective=obj, attention=att,
                                           rate_head=rate, probe_steps=args.flop_probe)
             for name, (obj, att, rate) in {"flowception": METHODS["flowception"], **methods}.items()}
    budget = args.train_steps * flops["flowception"]
    steps = {name: max(1, round(budget / f)) for name, f in flops.items()}
    print("  GFLOPs per step: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items()))
    print("  steps at equal budget: " + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)

    models, train_records = {}, {}
    for name, (obj, att, rate) in methods.items():
        print(f"training {name} for {steps[name]} steps ...", flush=True)
        models[name], train_records[name] = sc.train_model(args, train, out / "train" / name, steps=steps[name],
                                                           noising=noising, objective=obj, attention=att,
                                                           rate_head=rate)
        train_records[name]["gflops_per_step"] = flops[name] / 1e9
        train_records[name]["train_gflops_total"] = flops[name] * steps[name] / 1e9

    probes = {name: sc.context_probe(model, real) for name, model in models.items()}  # does it read frame 0?
    videos, sampling = {}, {}
    for name, model in models.items():
        t = sc.Timer()
        videos[name] = sample_method(name, model, real, args)
        seconds = float(t)
        subset = real[:args.flop_videos]
        kept: list = []
        counted = count_flops(lambda: kept.extend(sample_method(name, model, subset, args)))["total"]
        frames_counted = sum(v.shape[0] - 1 for v in kept)  # generated frames
        sampling[name] = {"seconds_per_video": seconds / len(real), "seconds_total": seconds,
                          "gflops_per_video": counted / len(subset) / 1e9,
                          "gflops_per_generated_frame": counted / max(frames_counted, 1) / 1e9}
        print(f"  sampled {len(real)} videos with {name} in {seconds:.0f} s "
              f"({sampling[name]['gflops_per_video']:.2f} GFLOP/video)", flush=True)

    sc.save_samples(out / "samples.safetensors", videos)
    real_features = np.stack([video_features(v) for v in real])
    rows, curves, drift = {}, {}, {}
    reference = sc.reference_videos(args)
    for name, vids in [*videos.items(), ("data", reference)]:
        features = np.stack([video_features(v) for v in vids])
        rows[name] = summarise(video_metrics(vids), features, real_features, args.bootstrap, args.seed)
        curves[name] = error_curve(vids, args.max_length, args.bootstrap, args.seed)
        drift[name] = drift_slope(vids, args.bootstrap, args.seed)
        rows[name]["drift_slope"] = drift[name]

    sweep = step_sweep(models, real, real_features, args)
    sweep_figure = _plot_sweep(sweep, out / "paradigms_step_sweep.png") if sweep else None

    extra = {name: {"train steps": str(steps[name]),
                    "sample GFLOP/video": f"{sampling[name]['gflops_per_video']:.2f}",
                    "sample s/video": f"{sampling[name]['seconds_per_video']:.3f}"} for name in methods}
    table = sc.print_table(rows, ("consistent", "median_error", "frac_frames_le_1px", "shape_changed", "frechet",
                                  "length", "drift_slope"),
                           f"MovingShapes I2V, {args.num_videos} held-out videos, {args.sample_steps} steps/frame, "
                           f"training budget {budget / 1e12:.2f} TFLOP each", extra)
    curve_text = _curve_table(curves, args.max_length)
    sweep_text = _sweep_table(sweep)
    (out / "table.txt").write_text(table + "\n\n" + curve_text + "\n\n" + sweep_text + "\n")
    figure = _plot_curves(curves, out / "paradigms_consistency.png")

    results = {
        "command": sc.command_line("paradigms.py", argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline_lengths": "the held-out video's true length",
        "train_flops_per_step": flops, "train_budget_flops": budget, "train": train_records,
        "sampling": sampling, "context_probe_t03": probes, "metrics": rows, "error_curves": curves,
        "step_sweep": sweep,
        "figures": {"consistency_curve": str(figure), "step_sweep": str(sweep_figure) if sweep_figure else None},
        "seconds": round(float(timer), 1),
    }
    sc.write_json(out / "results.json", results)
    print(f"done in {results['seconds']:.0f} s; results in {out / 'results.json'}", flush=True)
    return results


def sample_method(name: str, model: fe.FlowceptionDiT, real: list[torch.Tensor], args) -> list[torch.Tensor]:
    """Continue each real video's first frame with the method ``name``."""
    if name == "flowception":
        contexts = [fe.Context.image_to_video(v[0]) for v in real]
        return sc.sample_flowception(model, contexts, steps=args.sample_steps, seed=args.seed + 1,
                                     max_frames=2 * args.max_length)["videos"]
    gens = sc.generators(args.seed + 1, len(real))
    groups: dict[int, list[int]] = defaultdict(list)
    for i, v in enumerate(real):
        groups[v.shape[0]].append(i)
    out: list[torch.Tensor | None] = [None] * len(real)
    for length, idx in sorted(groups.items()):
        context = [real[i][:1] for i in idx]
        g = [gens[i] for i in idx]
        if name == "full_sequence":
            res = sample_full_sequence(model, context, num_frames=length, steps=args.sample_steps, generator=g,
                                       progress=False)
        else:
            res = sample_autoregressive(model, context, num_frames=length, steps_per_frame=args.sample_steps,
                                        use_cache=name == "ar_cache", generator=g, progress=False)
        for j, i in enumerate(idx):
            out[i] = res.videos[j]
    return out  # type: ignore[return-value]


def sampling_flops_per_video(name: str, model: fe.FlowceptionDiT, real: list[torch.Tensor], args) -> float:
    """Sampling FLOPs per video of ``name``, counted on the first ``--flop-videos`` contexts."""
    subset = real[:args.flop_videos]
    return count_flops(lambda: sample_method(name, model, subset, args))["total"] / len(subset)


def step_sweep(models: dict, real: list[torch.Tensor], real_features: np.ndarray, args) -> dict:
    """Quality against sampling FLOPs as the per-frame step count varies (the paper's Fig. 11):
    Flowception and AR with a KV cache, each step count of ``--step-sweep``, the same contexts and seeds."""
    sweep: dict[str, list[dict]] = {}
    for name in (m for m in SWEEP_METHODS if m in models):
        for steps in args.step_sweep:
            at = argparse.Namespace(**{**vars(args), "sample_steps": steps})
            timer = sc.Timer()
            vids = sample_method(name, models[name], real, at)
            seconds = float(timer)
            features = np.stack([video_features(v) for v in vids])
            row = summarise(video_metrics(vids), features, real_features, args.bootstrap, args.seed)
            point = {"steps_per_frame": steps, "gflops_per_video": sampling_flops_per_video(name, models[name], real, at) / 1e9,
                     "seconds_per_video": seconds / len(real), **{m: row[m] for m in SWEEP_METRICS}}
            sweep.setdefault(name, []).append(point)
            print(f"  sweep {name} at {steps} steps/frame: {point['gflops_per_video']:.2f} GFLOP/video, "
                  f"median error {sc.fmt(point['median_error'])} px", flush=True)
    return sweep


def _sweep_table(sweep: dict) -> str:
    if not sweep:
        return ""
    lines = ["quality against sampling FLOPs (per-frame steps swept) [95% CI]:",
             f"{'method':12s} {'steps':>5s} {'GFLOP/video':>11s}  {'median err px':24s}  {'frames <=1px':22s}  Frechet dist"]
    for name, points in sweep.items():
        for p in points:
            lines.append(f"{name:12s} {p['steps_per_frame']:5d} {p['gflops_per_video']:11.2f}  "
                         f"{sc.fmt(p['median_error'], 2):24s}  {sc.fmt(p['frac_frames_le_1px']):22s}  {sc.fmt(p['frechet'], 1)}")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _plot_sweep(sweep: dict, path: Path) -> Path:
    fig = viz.new_figure(9, 3.6)
    for k, (metric, label) in enumerate([("median_error", "median consistency error (px)"),
                                         ("frac_frames_le_1px", "frames within 1 px")]):
        ax = fig.add_subplot(1, 2, k + 1)
        for name, points in sweep.items():
            x = [p["gflops_per_video"] for p in points]
            y = [p[metric]["value"] for p in points]
            err = [[y_ - p[metric]["ci95"][0] for y_, p in zip(y, points)], [p[metric]["ci95"][1] - y_ for y_, p in zip(y, points)]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=3, label=name)
            for x_, y_, p in zip(x, y, points):
                ax.annotate(str(p["steps_per_frame"]), (x_, y_), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decade labels only: no overlaps
        sc.finish_axes(ax, "sampling GFLOP per video (log)", label, "steps per frame annotated (95% CI)")
    fig.tight_layout()
    return viz.save_figure(fig, path, dpi=110)


def _curve_table(curves: dict, max_index: int) -> str:
    names = list(curves)
    lines = ["mean per-frame consistency error (px) by frame index [95% CI]:",
             "frame  " + "  ".join(f"{n:>24s}" for n in names)]
    for f in range(max_index):
        cells = []
        for n in names:
            c = curves[n]
            cells.append(f"{c['mean'][f]:6.2f} [{c['ci95_low'][f]:5.2f},{c['ci95_high'][f]:5.2f}] n={c['videos'][f]:<3d}"
                         if c["videos"][f] else f"{'-':>24s}")
        lines.append(f"{f:5d}  " + "  ".join(f"{c:>24s}" for c in cells))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _plot_curves(curves: dict, path: Path) -> Path:
    fig = viz.new_figure(7, 4)
    ax = fig.add_subplot()
    for name, c in curves.items():
        keep = [f for f, n in enumerate(c["videos"]) if n >= 3]
        mean = [c["mean"][f] for f in keep]
        ax.plot(keep, mean, marker="o", ms=3, label=name, ls="--" if name == "data" else "-")
        ax.fill_between(keep, [c["ci95_low"][f] for f in keep], [c["ci95_high"][f] for f in keep], alpha=0.2)
    sc.finish_axes(ax, "frame index (0 = given frame)", "mean consistency error (px, clipped)",
                   "error accumulation on MovingShapes I2V (95% CI bands)")
    fig.tight_layout()
    return viz.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
