"""Interpolation between keyframes (paper §4.2, Fig. 6): does the model choose how many frames to
insert?

A Flowception model is trained on MovingShapes interpolation (first and last frames given, and
with probability 1/2 one more given frame in between). Keyframes are then taken from held-out
real videos, whose true gaps (frames between consecutive keyframes) are known: the first and
last frame, and for a fraction ``--middle-fraction`` of the videos also a middle frame at a
random position. The model is never told the gaps; it inserts frames until its rates say the
scene is complete.

Reported, with bootstrap 95 % CIs over videos: the Pearson correlation between inserted and
true frame counts per gap, the mean absolute count error (and, for scale, that of always
predicting the mean true gap), the mean inserted and true counts, the fraction of exact gaps,
and the consistency metrics (:mod:`flowception_ext.eval.shapes`) of the interpolated videos.

    python examples/interpolation.py                 # full run (about 15 min on 1 thread)
    python examples/interpolation.py --quick --out /tmp/ip   # CI check (under 3 min)

Outputs in ``--out``: ``results.json``, ``table.txt``, ``interpolation_examples.png`` (as the
paper's Fig. 6: keyframes dashed, inserted frames framed and labelled by insertion time, the
real video above each), ``interpolation_gaps.png`` (inserted vs true count per gap),
``samples.safetensors`` (the generated videos), the training run (``train/``; a rerun with the
same configuration reuses its final checkpoint and continues an interrupted one from its last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import flowception_ext as fe
from flowception_ext import viz
from flowception_ext.eval import bootstrap_ci, summarise, video_features, video_metrics
from flowception_ext.noising import NoisingConfig

import shapes_common as sc  # the shapes experiments' runner, beside this script

QUICK = dict(train_steps=60, train_videos=256, num_videos=12, sample_steps=8, bootstrap=200, max_length=12,
             examples=2)


def main(argv: list[str] | None = None) -> dict:
    parser = sc.make_parser(__doc__, out="runs/interpolation", train_steps=4000)
    parser.add_argument("--middle-fraction", type=float, default=0.5,
                        help="fraction of held-out videos given a middle keyframe too")
    parser.add_argument("--examples", type=int, default=4, help="videos drawn in the example figure")
    args = sc.parse_args(parser, argv, QUICK)
    if not 0 <= args.middle_fraction <= 1:
        raise ValueError(f"--middle-fraction must be in [0, 1], got {args.middle_fraction}")
    if args.min_length < 3:
        raise ValueError("--min-length must be >= 3 (a gap between two keyframes)")
    out = sc.setup(args)
    timer = sc.Timer()
    train, test = sc.datasets(args)
    real = [test[i] for i in range(len(test))]

    print(f"training Flowception (interpolation) for {args.train_steps} steps ...", flush=True)
    noising = NoisingConfig(tasks={"interpolation": 1.0}, interpolation_p_last=1.0, interpolation_max_interior=1)
    model, train_record = sc.train_model(args, train, out / "train", steps=args.train_steps, noising=noising)

    keys = _keyframe_positions(real, args.middle_fraction, args.seed)
    contexts = [fe.Context.interpolate(v[k]) for v, k in zip(real, keys)]
    t = sc.Timer()
    samples = sc.sample_flowception(model, contexts, steps=args.sample_steps, seed=args.seed + 1,
                                    max_frames=2 * args.max_length)
    sampling_seconds = round(float(t), 1)
    print(f"  sampled {len(contexts)} interpolations in {sampling_seconds:.0f} s", flush=True)

    sc.save_samples(out / "samples.safetensors", {"interpolated": samples["videos"]})
    true_gaps = [np.diff(k) - 1 for k in keys]
    inserted = [np.diff(torch.nonzero(c).flatten().numpy()) - 1 for c in samples["is_context"]]
    gaps = _gap_metrics(true_gaps, inserted, args.bootstrap, args.seed)
    real_features = np.stack([video_features(v) for v in real])
    quality = {}
    for name, vids in (("interpolated", samples["videos"]), ("data", sc.reference_videos(args))):
        features = np.stack([video_features(v) for v in vids])
        quality[name] = summarise(video_metrics(vids), features, real_features, args.bootstrap, args.seed)

    title = (f"MovingShapes interpolation, {len(real)} held-out videos ({sum(len(g) for g in true_gaps)} gaps), "
             f"{args.sample_steps} steps, {args.train_steps} training steps")
    lines = [title, f"{'gap metric':34s} value [95% CI]"]
    for name, entry in gaps.items():
        lines.append(f"{name:34s} {sc.fmt(entry)}")
    print("\n".join(lines), flush=True)
    table = sc.print_table(quality, ("consistent", "median_error", "frac_frames_le_1px", "frechet", "length"),
                           "quality of the interpolated videos")
    (out / "table.txt").write_text("\n".join(lines) + "\n\n" + table + "\n")

    figures = {"examples": str(_examples_figure(real, keys, samples, args.examples, out / "interpolation_examples.png")),
               "gaps": str(_gaps_figure(true_gaps, inserted, gaps, out / "interpolation_gaps.png"))}
    results = {
        "command": sc.command_line("interpolation.py", argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train": train_record, "sampling_seconds": sampling_seconds,
        "max_frames_hit_fraction": float(np.mean(samples["max_frames_hit"])),
        "gap_metrics": gaps, "quality": quality,
        "per_video": [{"keyframes": k.tolist(), "true_gaps": g.tolist(), "inserted": i.tolist()}
                      for k, g, i in zip(keys, true_gaps, inserted)],
        "figures": figures, "seconds": round(float(timer), 1),
    }
    sc.write_json(out / "results.json", results)
    print(f"done in {results['seconds']:.0f} s; results in {out / 'results.json'}", flush=True)
    return results


def _keyframe_positions(real: list[torch.Tensor], middle_fraction: float, seed: int) -> list[np.ndarray]:
    """First and last frame of each video; for a ``middle_fraction`` of them (videos of >= 5 frames)
    also a frame drawn uniformly with at least one frame on each side."""
    rng = np.random.default_rng(seed + 7)
    keys = []
    for v in real:
        n = v.shape[0]
        if n >= 5 and rng.random() < middle_fraction:
            keys.append(np.array([0, int(rng.integers(2, n - 2)), n - 1]))
        else:
            keys.append(np.array([0, n - 1]))
    return keys


def _gap_metrics(true_gaps: list[np.ndarray], inserted: list[np.ndarray], reps: int, seed: int) -> dict:
    """Count agreement per gap; bootstrap over videos (all gaps of a resampled video go together)."""
    def pooled(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([true_gaps[i] for i in idx]).astype(float),
                np.concatenate([inserted[i] for i in idx]).astype(float))

    def correlation(idx):
        t, s = pooled(idx)
        return float(np.corrcoef(t, s)[0, 1]) if t.std() > 0 and s.std() > 0 else float("nan")

    stats = {
        "pearson_r(inserted, true gap)": correlation,
        "mean |inserted - true|": lambda idx: float(np.abs(np.subtract(*pooled(idx))).mean()),
        "mean |mean true gap - true| (ref)": lambda idx: float(np.abs(pooled(idx)[0] - pooled(idx)[0].mean()).mean()),
        "mean inserted per gap": lambda idx: float(pooled(idx)[1].mean()),
        "mean true gap": lambda idx: float(pooled(idx)[0].mean()),
        "fraction of gaps exact": lambda idx: float(np.mean(np.subtract(*pooled(idx)) == 0)),
    }
    rng = np.random.default_rng(seed)
    everything = np.arange(len(true_gaps))
    return {name: {"value": fn(everything), "ci95": list(bootstrap_ci(fn, len(true_gaps), reps, rng))}
            for name, fn in stats.items()}


def _examples_figure(real, keys, samples, count: int, path: Path) -> Path:
    rows = []
    for i in range(min(count, len(real))):
        marks = torch.zeros(real[i].shape[0], dtype=torch.bool)
        marks[torch.as_tensor(keys[i])] = True
        rows.append({"label": f"real #{i}", "frames": real[i], "is_context": marks})
        rows.append({"label": f"generated #{i}", "frames": samples["videos"][i],
                     "insert_time": samples["insert_time"][i], "is_context": samples["is_context"][i]})
    return viz.plot_frame_rows(rows, path, "interpolation: keyframes (dashed) from real videos; the model picks the "
                                          "number of in-between frames")


def _gaps_figure(true_gaps, inserted, gaps: dict, path: Path) -> Path:
    t = np.concatenate(true_gaps)
    s = np.concatenate(inserted)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, (2, t.size))
    fig = viz.new_figure(4.5, 4.2)
    ax = fig.add_subplot()
    ax.scatter(t + jitter[0], s + jitter[1], s=10, alpha=0.6)
    top = max(t.max(), s.max()) + 1
    ax.plot([0, top], [0, top], "k--", lw=1, label="inserted = true")
    r = gaps["pearson_r(inserted, true gap)"]
    sc.finish_axes(ax, "true frames between keyframes", "frames inserted by the model",
                   f"r = {r['value']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]")
    fig.tight_layout()
    return viz.save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
