"""The demo: train a tiny Flowception model on the ToyColoring length-modelling toy (paper App. F)
on the CPU, sample 64 videos, and write what they look like.

Outputs (in --out): ``lengths.png`` (generated vs data length histogram), ``samples.gif``
(8 generated videos side by side), ``insertion_order.png`` (one video's frames in final order,
each framed by its insertion time), ``summary.json``, and the run (checkpoints, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch

import flowception_ext as fe
from flowception_ext.data import ToyColoring
from flowception_ext.data.toy import TOY_LENGTHS
from flowception_ext.eval import check_manifold
from flowception_ext.io import save_video
from flowception_ext.viz import plot_insertion_order, plot_length_histogram


def grid_video(videos: list[torch.Tensor], pad: float = 1.0) -> torch.Tensor:
    """Videos side by side (shorter ones hold their last frame), separated by a white column."""
    n = max(v.shape[0] for v in videos)
    cols = []
    for v in videos:
        held = torch.cat([v, v[-1:].expand(n - v.shape[0], *v.shape[1:])])
        cols += [held, torch.full((n, v.shape[1], v.shape[2], 1), pad)]
    return torch.cat(cols[:-1], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output directory")
    parser.add_argument("--train-steps", type=int, default=4000)
    parser.add_argument("--num-videos", type=int, default=64, help="videos to sample")
    parser.add_argument("--sample-steps", type=int, default=200, help="1/h of the sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads. The toy's tensors are tiny, so one thread is enough; more "
                             "threads only wait on each other, badly so on a busy machine")
    parser.add_argument("--motion", default="stride", choices=("stride", "rotation"),
                        help="ToyColoring motion: 'stride' (1-3 ring pixels per frame, independent of the length) "
                             "or 'rotation' (the paper's: one turn per video)")
    parser.add_argument("--no-length-conditioning", dest="length_conditioning", action="store_false",
                        help="do not embed the frame count and frame index (see FlowceptionConfig)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()

    dataset = ToyColoring(num_videos=4096, seed=args.seed, motion=args.motion)
    config = fe.FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=3, patch_size=3,
                                              length_conditioning=args.length_conditioning,
                                              extra={"dataset": f"toy-coloring:{args.motion}"})
    torch.manual_seed(args.seed)
    model = fe.FlowceptionDiT(config)
    train_config = fe.TrainConfig(steps=args.train_steps, lr=1e-3, warmup_steps=50, frames_per_batch=512,
                                  seed=args.seed, out_dir=str(out / "run"), checkpoint_every=500, log_every=50)
    print(f"training a {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter model for "
          f"{args.train_steps} steps on ToyColoring ({args.motion}) ...")
    fe.Trainer(model, dataset, train_config).fit()
    train_seconds = time.perf_counter() - start

    ema = fe.FlowceptionDiT.from_pretrained(out / "run" / "checkpoints" / f"step_{args.train_steps:08d}",
                                            weights="ema.safetensors")
    print(f"sampling {args.num_videos} videos ...")
    output = fe.sample(ema, num_videos=args.num_videos, steps=args.sample_steps,
                       generator=torch.Generator().manual_seed(args.seed + 1))
    lengths = output.lengths
    checks = [check_manifold(v, **dataset.rules) for v in output.videos]
    exact = sum(n in TOY_LENGTHS for n in lengths) / len(lengths)
    on_manifold = sum(c.on_manifold for c in checks) / len(checks)
    frames_ok = sum(c.frames_ok for c in checks) / len(checks)

    histogram = plot_length_histogram(lengths, out / "lengths.png", reference=dataset.lengths)
    gif = save_video(grid_video(output.videos[:8]), out / "samples.gif", fps=6, scale=16)
    figure = plot_insertion_order(output, out / "insertion_order.png", video=0)
    summary = {
        "train_steps": args.train_steps, "sample_steps": args.sample_steps,
        "length_conditioning": args.length_conditioning, "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - start, 1),
        "fraction_lengths_15_20_25_30": exact, "fraction_on_manifold": on_manifold,
        "fraction_frames_follow_rules": frames_ok,
        "length_counts": dict(sorted(collections.Counter(lengths).items())),
        "files": {"length_histogram": str(histogram), "samples_gif": str(gif), "insertion_order": str(figure)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"\n{exact:.0%} of the sampled lengths are exactly 15, 20, 25 or 30; "
          f"{on_manifold:.0%} of the videos are on the data manifold.")
    print(f"figures: {histogram}, {figure}; samples: {gif}")


if __name__ == "__main__":
    main()
