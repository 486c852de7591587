"""Length modelling on ToyColoring (paper App. F): train a model, sample videos, compare the
generated lengths with the data's.

Prints the length counts, the fraction of lengths in the data's set, the total-variation
distance between the generated and data length laws, the on-manifold rate, the fraction of
videos breaking each rule of the checker and the border misfits, and writes a histogram. With
the stride motion it also probes whether the network pools the frames (``offset_probe``).
``--objective full_sequence`` trains the same backbone as plain flow matching on whole videos
(no rate head) and samples it at the data's lengths: a control that sees every frame at its
true position. Deterministic for a given thread count (the default is one thread). A rerun
into the same ``--out`` with the same model and training options reuses the finished
checkpoint and only samples again.

    python examples/length_modeling.py                  # the README's run: 24000 steps, ~38 min CPU on 1 thread
    python examples/length_modeling.py --prediction velocity     # the network predicts the velocity instead
    python examples/length_modeling.py --objective full_sequence --out runs/lm_full_sequence  # the control
    python examples/length_modeling.py --steps 5000 --motion rotation
    python examples/length_modeling.py --steps 1500 --lengths 20      # control: one length only
    python examples/length_modeling.py --quick --out /tmp/lm          # CI check (under 3 min)
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

import torch
from torch import Tensor

import flowception_ext as fe
from flowception_ext.sampling import sample_full_sequence
from flowception_ext.data import ToyColoring
from flowception_ext.eval import (MANIFOLD_RULES, bayes_clean_estimate, check_manifold, fit_stride_offsets,
                                  frame_ring_misfit, ring_offsets, stride_aliased)
from flowception_ext.training import finished_checkpoint
from flowception_ext.viz import plot_length_histogram


def frame_figures(dataset: ToyColoring, videos: list[torch.Tensor]) -> dict:
    """On-manifold and frame-rule fractions, the fraction of videos breaking each rule (each
    checked on its own) and mixing strides s and s + 4 (:func:`stride_aliased`), the checker's
    border misfit (one gradient for the whole video) and the per-frame misfit (each frame's own
    gradient)."""
    checks = [check_manifold(v, **dataset.rules) for v in videos]
    per_frame = np.concatenate([frame_ring_misfit(v) for v in videos])
    return {
        "fraction_on_manifold": sum(c.on_manifold for c in checks) / len(checks),
        "fraction_frames_follow_rules": sum(c.frames_ok for c in checks) / len(checks),
        "fraction_breaking_each_rule": {rule: round(sum(rule in c.failed for c in checks) / len(checks), 4)
                                        for rule in MANIFOLD_RULES},
        # videos breaking the stride rule by mixing strides s and s + 4 (which agree on every other frame)
        "fraction_stride_aliased": round(sum(stride_aliased(v) for v in videos) / len(videos), 4),
        "video_border_misfit_quartiles": [round(q, 3) for q in np.quantile([c.misfit for c in checks],
                                                                           [0.25, 0.5, 0.75])],
        "frame_border_misfit_quartiles": [round(q, 3) for q in np.quantile(per_frame, [0.25, 0.5, 0.75])],
        "fraction_frames_border_within_atol": round(float((per_frame <= 0.1).mean()), 4),
    }


def clean_estimates(model: fe.FlowceptionDiT, noisy: list[Tensor], times: list[Tensor]) -> list[Tensor]:
    """The network's clean-frame estimate ``X_t + (1 − t) v`` of each noisy video."""
    packed = fe.PackedVideos.from_list(noisy, times=times)
    velocity, _ = model(packed)
    return packed.split(packed.frames + (1 - packed.times)[:, None, None, None] * velocity)


@torch.no_grad()
def offset_probe(model: fe.FlowceptionDiT, dataset: ToyColoring, times=(0.2, 0.4, 0.6), num_videos: int = 64) -> dict:
    """Does the network pool what all frames say about the motion? The last ``num_videos`` data
    videos, cut to the shortest allowed length, are noised to one time t. Reported: the fraction
    of frames whose ring offset is right in the network's clean-frame estimate X_t + (1 - t) v,
    next to the least-squares fit of one stride video to the same noisy frames, which pools them
    all, and to the Bayes estimate ``bayes_clean_estimate`` (the posterior mean, the best any
    network trained with a squared loss can do); and the mean squared error of the network's and
    the Bayes clean-frame estimates. "t = 0" puts one pure-noise frame among clean real ones
    instead. Stride motion only. One generator draws the noise of every t in turn, so a probe at
    ``times=(0.4,)`` alone sees other noise at t = 0.4 than one at ``(0.2, 0.4, 0.6)``."""
    num_frames = min(dataset.allowed_lengths)
    videos = [dataset[i][:num_frames] for i in range(len(dataset) - num_videos, len(dataset))]
    truth = [ring_offsets(v) for v in videos]
    generator = torch.Generator().manual_seed(0)

    def right(offsets: list[np.ndarray], noised: list[Tensor]) -> float:  # fraction right, over the noised frames
        hits = [(o == r)[m.numpy()] for o, r, m in zip(offsets, truth, noised)]
        return round(float(np.mean(np.concatenate(hits))), 3)

    def mse(estimates: list[Tensor]) -> float:  # squared error of clean-frame estimates, over all pixels
        return round(float(torch.cat([(x - v).square().flatten() for x, v in zip(estimates, videos)]).mean()), 4)

    result = {}
    for t in (0.0, *times):
        times_ = [torch.full((len(v),), t) for v in videos]
        if t == 0.0:  # one noise frame among clean frames
            for ts in times_:
                ts.fill_(1.0)[int(torch.randint(num_frames, (1,), generator=generator))] = 0.0
        noisy = [ts.view(-1, 1, 1, 1) * v + (1 - ts.view(-1, 1, 1, 1)) * torch.randn(v.shape, generator=generator)
                 for v, ts in zip(videos, times_)]
        clean = clean_estimates(model, noisy, times_)
        noised = [ts < 1 for ts in times_]
        key = "one_noise_frame_among_clean" if t == 0.0 else f"all_frames_at_t={t}"
        result[key] = {"network": right([ring_offsets(x) for x in clean], noised)}
        if t > 0:
            bayes = [bayes_clean_estimate(x, t, strides=dataset.strides, directions=dataset.directions,
                                          min_contrast=dataset.min_contrast).float() for x in noisy]
            result[key] |= {"least_squares_stride_fit": right([fit_stride_offsets(x) for x in noisy], noised),
                            "bayes_posterior_mean": right([ring_offsets(x) for x in bayes], noised),
                            "network_mse": mse(clean), "bayes_mse": mse(bayes)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="15,20,25,30", help="allowed video lengths, comma-separated")
    parser.add_argument("--motion", default="stride", choices=("stride", "rotation"), help="ToyColoring motion")
    parser.add_argument("--steps", type=int, default=24000, help="training steps")
    parser.add_argument("--num-videos", type=int, default=32768, help="training videos (generated, so cheap)")
    parser.add_argument("--preset", default="tiny", help="model size preset")
    parser.add_argument("--hidden-size", type=int, default=None, help="width of the model (default: the preset's)")
    parser.add_argument("--frames-per-batch", type=int, default=512, help="frame budget of a batch")
    parser.add_argument("--objective", default="flowception", choices=("flowception", "full_sequence"),
                        help="Flowception, or the full-sequence control sampled at the data's lengths")
    parser.add_argument("--prediction", default="clean", choices=("velocity", "clean"),
                        help="network output: the clean frame (x-prediction, default) or the velocity")
    parser.add_argument("--no-length-conditioning", dest="length_conditioning", action="store_false",
                        help="do not embed the frame count and frame index (see FlowceptionConfig)")
    parser.add_argument("--num-samples", type=int, default=512, help="videos to sample")
    parser.add_argument("--sample-steps", type=int, default=200, help="1/h of the sampler")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/length_modeling")
    parser.add_argument("--quick", action="store_true", help="a few steps and samples: a CI check (under 3 minutes)")
    if parser.parse_known_args()[0].quick:  # explicit options still win
        parser.set_defaults(steps=100, num_samples=16, sample_steps=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = tuple(int(n) for n in args.lengths.split(","))

    dataset = ToyColoring(num_videos=args.num_videos, seed=0, allowed_lengths=lengths, motion=args.motion)
    torch.manual_seed(0)
    width = {} if args.hidden_size is None else {"hidden_size": args.hidden_size}
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset(
        args.preset, in_channels=3, frame_size=3, patch_size=3, length_conditioning=args.length_conditioning,
        prediction=args.prediction, rate_head=args.objective == "flowception", **width))
    config = fe.TrainConfig(steps=args.steps, lr=1e-3, warmup_steps=50, frames_per_batch=args.frames_per_batch,
                            out_dir=args.out, checkpoint_every=args.steps, log_every=100, objective=args.objective)
    finished = finished_checkpoint(args.out, model.config, config)
    if finished is None:
        fe.Trainer(model, dataset, config).fit()
    else:
        print(f"reusing the finished run {finished} (same model and training config)", flush=True)
    ema = fe.FlowceptionDiT.from_pretrained(Path(args.out) / "checkpoints" / f"step_{args.steps:08d}",
                                            weights="ema.safetensors")
    probe = {"offset_accuracy_probe": offset_probe(ema, dataset)} if args.motion == "stride" else {}
    generator = torch.Generator().manual_seed(0)
    if args.objective == "full_sequence":  # lengths given: those of the first data items
        wanted = collections.Counter(dataset.lengths[:args.num_samples])
        videos = [v for n, count in sorted(wanted.items())
                  for v in sample_full_sequence(ema, num_frames=n, num_videos=count, steps=args.sample_steps,
                                                generator=generator).videos]
        result = {"lengths": f"given: those of the first {args.num_samples} data videos",
                  **frame_figures(dataset, videos), **probe}
    else:
        output = fe.sample(ema, num_videos=args.num_samples, steps=args.sample_steps, generator=generator)
        generated = collections.Counter(output.lengths)
        data = collections.Counter(dataset.lengths)
        support = set(generated) | set(data)
        tv = 0.5 * sum(abs(generated[n] / args.num_samples - data[n] / len(dataset)) for n in support)
        result = {
            "length_counts": dict(sorted(generated.items())),
            "fraction_in_data_lengths": sum(generated[n] for n in lengths) / args.num_samples,
            "total_variation_distance": round(tv, 4),
            **frame_figures(dataset, output.videos),
            **probe,
            "histogram": str(plot_length_histogram(output.lengths, Path(args.out) / "lengths.png",
                                                   reference=dataset.lengths)),
        }
    (Path(args.out) / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))

if __name__ == "__main__":
    main()
