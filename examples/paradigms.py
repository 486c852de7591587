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
consistency, median per-frame error, fraction of frames within 1 px, Fréchet distance of motion
statistics to the held-out videos), the **error-accumulation curve** (mean per-frame consistency
error at each frame index, plotted with its CI band in ``paradigms_consistency.png``) and its
least-squares slope (px per frame: drift), sampling FLOPs per video and per frame (counted on
the first ``--flop-videos`` videos) and sampling wall time per video (the whole run).

    python examples/paradigms.py                    # full run (about 30 min on 1 thread)
    python examples/paradigms.py --quick --out /tmp/pd     # CI check (under 3 min)

Outputs in ``--out``: ``results.json``, ``table.txt`` (with the per-frame curves),
``paradigms_consistency.png``, ``samples.safetensors`` (the generated videos), the training
runs (``train/<method>/``; a rerun with the same configuration reuses their final checkpoints).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

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
             flop_probe=3, flop_videos=2)


def main(argv: list[str] | None = None) -> dict:
    parser = sc.make_parser(__doc__, out="runs/paradigms", train_steps=1800, num_videos=96)
    parser.add_argument("--flop-probe", type=int, default=12, help="training steps counted per objective")
    parser.add_argument("--flop-videos", type=int, default=8, help="videos whose sampling FLOPs are counted")
    args = sc.parse_args(parser, argv, QUICK)
    if args.flop_probe < 1 or args.flop_videos < 1:
        raise ValueError("--flop-probe and --flop-videos must be >= 1")
    out = sc.setup(args)
    timer = sc.Timer()
    train, test = sc.datasets(args)
    real = [test[i] for i in range(len(test))]
    noising = NoisingConfig(tasks={"image_to_video": 1.0})

    print(f"counting training FLOPs per step ({args.flop_probe} probe steps per objective) ...", flush=True)
    flops = {name: sc.train_flops_per_step(args, train, noising=noising, objective=obj, attention=att,
                                           rate_head=rate, probe_steps=args.flop_probe)
             for name, (obj, att, rate) in METHODS.items()}
    budget = args.train_steps * flops["flowception"]
    steps = {name: max(1, round(budget / f)) for name, f in flops.items()}
    print("  GFLOPs per step: " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items()))
    print("  steps at equal budget: " + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)

    models, train_records = {}, {}
    for name, (obj, att, rate) in METHODS.items():
        print(f"training {name} for {steps[name]} steps ...", flush=True)
        models[name], train_records[name] = sc.train_model(args, train, out / "train" / name, steps=steps[name],
                                                           noising=noising, objective=obj, attention=att,
                                                           rate_head=rate)
        train_records[name]["gflops_per_step"] = flops[name] / 1e9
        train_records[name]["train_gflops_total"] = flops[name] * steps[name] / 1e9

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

    extra = {name: {"train steps": str(steps[name]),
                    "sample GFLOP/video": f"{sampling[name]['gflops_per_video']:.2f}",
                    "sample s/video": f"{sampling[name]['seconds_per_video']:.3f}"} for name in METHODS}
    table = sc.print_table(rows, ("consistent", "median_error", "frac_frames_le_1px", "frechet", "length",
                                  "drift_slope"),
                           f"MovingShapes I2V, {args.num_videos} held-out videos, {args.sample_steps} steps/frame, "
                           f"training budget {budget / 1e12:.2f} TFLOP each", extra)
    curve_text = _curve_table(curves, args.max_length)
    (out / "table.txt").write_text(table + "\n\n" + curve_text + "\n")
    figure = _plot_curves(curves, out / "paradigms_consistency.png")

    results = {
        "command": " ".join(["python", "examples/paradigms.py", *(argv if argv is not None else sys.argv[1:])]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline_lengths": "the held-out video's true length",
        "train_flops_per_step": flops, "train_budget_flops": budget, "train": train_records,
        "sampling": sampling, "metrics": rows, "error_curves": curves,
        "figures": {"consistency_curve": str(figure)},
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
