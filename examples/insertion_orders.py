"""Insertion orders (paper Table 2) on MovingShapes image-to-video.

One Flowception model is trained on MovingShapes image-to-video (frame 0 given). Each held-out
video's first frame is then continued four ways with the same model and the same number of
sampler steps:

* ``learned``: the model's insertion rates decide where and when frames appear (and the length);
* ``random``, ``hierarchical``, ``left_to_right``: data-independent orders
  (``sample(order=...)``) that insert exactly ``target_length − 1`` frames. ``target_length``
  is, for each video, **the length the learned run produced for the same video** (same context,
  same seed), so the four orders are compared at identical lengths and only the order differs.

The paper finds random < hierarchical < left-to-right < learned (FVD and VBench). Here the
metrics are those of :mod:`flowception_ext.eval.shapes`: the dataset checker's strict verdict, the median
per-frame consistency error, the fraction of frames within 1 px, and a Fréchet distance of
per-video motion statistics to the held-out real videos, each with a bootstrap 95 % CI, plus
paired differences against the learned order. A ``data`` row scores other real videos the
same way (the floor of every metric).

    python examples/insertion_orders.py                 # full run (about 25 min on 1 thread)
    python examples/insertion_orders.py --quick --out /tmp/io   # CI check (under 3 min)

Outputs in ``--out``: ``results.json``, ``table.txt``, ``insertion_orders_metrics.png``
(metrics with CIs), ``insertion_orders_examples.png`` (one video under each order),
``samples.safetensors`` (the generated videos), the training run (``train/``; a rerun with the
same configuration reuses its final checkpoint and continues an interrupted one from its last).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import flowception_ext as fe
from flowception_ext import viz
from flowception_ext.eval import paired_difference, summarise, video_features, video_metrics
from flowception_ext.noising import NoisingConfig

import shapes_common as sc  # the shapes experiments' runner, beside this script

ORDERS = ("learned", "random", "hierarchical", "left_to_right")
QUICK = dict(train_steps=60, train_videos=256, num_videos=12, sample_steps=8, bootstrap=200, max_length=12)


def main(argv: list[str] | None = None) -> dict:
    parser = sc.make_parser(__doc__, out="runs/insertion_orders", train_steps=5000)
    args = sc.parse_args(parser, argv, QUICK)
    out = sc.setup(args)
    timer = sc.Timer()
    train, test = sc.datasets(args)
    reference = sc.reference_videos(args)
    real = [test[i] for i in range(len(test))]

    print(f"training Flowception (image-to-video) for {args.train_steps} steps ...", flush=True)
    noising = NoisingConfig(tasks={"image_to_video": 1.0})
    model, train_record = sc.train_model(args, train, out / "train", steps=args.train_steps, noising=noising)

    contexts = [fe.Context.image_to_video(v[0]) for v in real]
    max_frames = 2 * args.max_length
    samples, seconds = {}, {}
    for order in ORDERS:
        t = sc.Timer()
        lengths = None if order == "learned" else [v.shape[0] for v in samples["learned"]["videos"]]
        samples[order] = sc.sample_flowception(model, contexts, steps=args.sample_steps, seed=args.seed + 1,
                                               order=order, target_lengths=lengths, max_frames=max_frames)
        seconds[order] = round(float(t), 1)
        print(f"  sampled {len(contexts)} videos with order={order} in {seconds[order]:.0f} s", flush=True)

    sc.save_samples(out / "samples.safetensors", {o: samples[o]["videos"] for o in ORDERS})
    real_features = np.stack([video_features(v) for v in real])
    rows, per_video = {}, {}
    for name, videos in [*((o, samples[o]["videos"]) for o in ORDERS), ("data", reference)]:
        per_video[name] = video_metrics(videos)
        features = np.stack([video_features(v) for v in videos])
        rows[name] = summarise(per_video[name], features, real_features, args.bootstrap, args.seed)
    paired = {o: {m: paired_difference(per_video[o][m], per_video["learned"][m], args.bootstrap, args.seed)
                  for m in ("median_error", "frac_frames_le_1px")} for o in ORDERS[1:]}

    metrics = ("consistent", "median_error", "frac_frames_le_1px", "frechet", "length")
    table = sc.print_table(rows, metrics, f"MovingShapes I2V, {args.num_videos} held-out videos, "
                                          f"{args.sample_steps} steps, {args.train_steps} training steps")
    lines = ["", "paired differences (order − learned), same videos:"]
    for o, d in paired.items():
        lines.append(f"  {o:14s} median err {sc.fmt(d['median_error'])}   frames<=1px {sc.fmt(d['frac_frames_le_1px'])}")
    print("\n".join(lines), flush=True)
    (out / "table.txt").write_text(table + "\n" + "\n".join(lines) + "\n")

    figures = {
        "metrics": str(sc.plot_metric_bars(rows, ("median_error", "frac_frames_le_1px", "frechet"),
                                           out / "insertion_orders_metrics.png", "insertion orders (MovingShapes I2V)")),
        "examples": str(_examples_figure(samples, real, out / "insertion_orders_examples.png")),
    }
    results = {
        "command": sc.command_line("insertion_orders.py", argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "target_length": "per video, the length of the learned-order sample for the same context and seed",
        "train": train_record,
        "sampling_seconds": seconds,
        "max_frames": max_frames,
        "max_frames_hit_fraction": {o: float(np.mean(samples[o]["max_frames_hit"])) for o in ORDERS},
        "metrics": rows,
        "paired_vs_learned": paired,
        "figures": figures,
        "seconds": round(float(timer), 1),
    }
    sc.write_json(out / "results.json", results)
    print(f"done in {results['seconds']:.0f} s; results in {out / 'results.json'}", flush=True)
    return results


def _examples_figure(samples: dict, real: list[torch.Tensor], path: Path) -> Path:
    """The first held-out video under each order (frames framed by insertion time) and the real one."""
    rows = [{"label": "real", "frames": real[0]}]
    for order in ORDERS:
        s = samples[order]
        rows.append({"label": order, "frames": s["videos"][0], "insert_time": s["insert_time"][0],
                     "is_context": s["is_context"][0]})
    return viz.plot_frame_rows(rows, path, "one held-out context under each insertion order")


if __name__ == "__main__":
    main()
