"""Can the network learn the best ToyColoring denoiser at all? A diagnostic of the offset probe's
plateau (docs/experiments/recipe_study.md, "How far from the best denoiser").

The offset probe noises 64 held-out 15-frame stride videos to t = 0.4 and asks whether the
network's clean-frame estimate pools what all frames say about the motion. This script removes
everything else. It trains a model of the recipe study (``--variant``) as a plain denoiser of
whole 15-frame videos: every frame of a video at one time t (``--times uniform``: t ~ U(0, 1);
``fixed``: always ``--t``, the probe's task and nothing else), the squared error of the
clean-frame estimate as the loss, no insertions, no rate head. Variations:

* ``--weighting trainer``: the loss weighted as the trainer weights it (the clean-frame error
  over ``max(1 − t, clean_min_gap)²``, :meth:`~flowception_ext.FlowceptionDiT.velocity_loss_weight`);
* ``--from-frames 30``: each training video is 15 frames drawn in order from a 30-frame video,
  so neighbouring frames may have missing frames between them that the network cannot see, as
  the present frames of a Flowception training state do.

It trains outside :class:`~flowception_ext.Trainer` on purpose: the trainer draws Flowception
or full-sequence states. Every ``--eval-every`` steps the EMA weights are compared with the
Bayes posterior mean (:func:`~flowception_ext.eval.bayes_clean_estimate`) on the probe's 64
videos, noised once (other draws than the probe's): the clean-frame MSE of each and the fraction
of ring offsets right. One thread; the run stops at the first step past ``--budget-minutes`` of
CPU time, and writes ``<variant>_<times>[_trainer_weights][_from30][_seed1].json`` in ``--out``,
with the EMA weights in the directory of the same name.
``--num-samples N`` then samples N 15-frame videos from the EMA weights with the full-sequence
Euler sampler and scores them against the data manifold, as the recipe study scores Flowception's.

    python examples/toy_denoiser.py --out runs/toy_denoiser                                # rope20_wide, t ~ U(0, 1)
    python examples/toy_denoiser.py --times fixed --out runs/toy_denoiser                  # the probe's task only
    python examples/toy_denoiser.py --variant rope20_wide_swiglu --out runs/toy_denoiser   # SwiGLU layers
    python examples/toy_denoiser.py --variant rope20_wide_swiglu --num-samples 128 --out runs/toy_denoiser_samples
    python examples/toy_denoiser.py --quick --out /tmp/td                                  # CI check (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import flowception_ext as fe
from flowception_ext.checkpoint import save_text
from flowception_ext.data import ToyColoring
from flowception_ext.data.toy import TOY_LENGTHS
from flowception_ext.eval import bayes_clean_estimate, ring_offsets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from length_modeling import clean_estimates, frame_figures  # noqa: E402  (the offset probe's estimate, sample scores)
from recipe_study import COMBINATIONS, SHAPES_ONLY, VARIANTS, recipe  # noqa: E402  (the study's models)

NUM_FRAMES = 15  # the probe's length (the shortest ToyColoring video)


class Probe:
    """The offset probe's held-out videos, noised once to ``t``, and the Bayes estimate's figures."""

    def __init__(self, dataset: ToyColoring, t: float, num_videos: int) -> None:
        self.t = t
        self.videos = [dataset[i][:NUM_FRAMES] for i in range(len(dataset) - num_videos, len(dataset))]
        generator = torch.Generator().manual_seed(0)
        self.noisy = [t * v + (1 - t) * torch.randn(v.shape, generator=generator) for v in self.videos]
        self.bayes = self.score([bayes_clean_estimate(x, t).float() for x in self.noisy])

    def score(self, estimates: list[torch.Tensor]) -> dict:
        right = np.concatenate([ring_offsets(x) == ring_offsets(v) for x, v in zip(estimates, self.videos)])
        mse = torch.cat([(x - v).square().flatten() for x, v in zip(estimates, self.videos)]).mean()
        return {"offsets_right": round(float(right.mean()), 4), "mse": round(float(mse), 5)}

    @torch.no_grad()
    def network(self, model: fe.FlowceptionDiT) -> dict:
        times = [torch.full((NUM_FRAMES,), self.t) for _ in self.noisy]
        return self.score(clean_estimates(model, self.noisy, times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    toy = [n for n in [*VARIANTS, *COMBINATIONS] if n not in SHAPES_ONLY]
    parser.add_argument("--variant", default="rope20_wide", choices=toy,
                        help="the recipe study's variant whose model to train (its other changes do not apply)")
    parser.add_argument("--times", default="uniform", choices=("uniform", "fixed"),
                        help="t of each training video: U(0, 1), or always --t")
    parser.add_argument("--t", type=float, default=0.4, help="the probe's time (and the fixed training time)")
    parser.add_argument("--weighting", default="none", choices=("none", "trainer"),
                        help="the clean-frame error unweighted, or weighted as the trainer weights it")
    parser.add_argument("--budget-minutes", type=float, default=12.0, help="CPU minutes of training")
    parser.add_argument("--from-frames", type=int, default=NUM_FRAMES,
                        help="draw each training video's 15 frames in order from this many (15: contiguous videos)")
    parser.add_argument("--videos-per-step", type=int, default=22, help="15-frame videos a step (330 frames)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between comparisons with the Bayes estimate")
    parser.add_argument("--num-videos", type=int, default=32768, help="training videos (generated, so cheap)")
    parser.add_argument("--probe-videos", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=0,
                        help="15-frame videos to sample from the EMA weights (full-sequence Euler, --sample-steps) "
                             "and score against the data manifold")
    parser.add_argument("--sample-steps", type=int, default=200)
    parser.add_argument("--out", default="runs/toy_denoiser")
    parser.add_argument("--quick", action="store_true", help="seconds of training: a CI check")
    parser.add_argument("--threads", type=int, default=1)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(budget_minutes=0.05, eval_every=20, probe_videos=8, num_videos=512, num_samples=4,
                            sample_steps=10)
    args = parser.parse_args()
    if args.from_frames not in TOY_LENGTHS:
        parser.error(f"--from-frames must be a ToyColoring length {TOY_LENGTHS}, got {args.from_frames}")
    if not 0 < args.t <= 0.9:
        parser.error(f"--t must be in (0, 0.9] (the Bayes estimate's range), got {args.t}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    dataset = ToyColoring(num_videos=args.num_videos, seed=0, allowed_lengths=(args.from_frames,))
    held_out = ToyColoring(num_videos=4096, seed=0)  # every length: the probe's videos, the manifold's rules
    probe = Probe(held_out, args.t, args.probe_videos)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=3,
                                                                **recipe(args.variant)["model"]))
    ema = fe.FlowceptionDiT(model.config).eval()
    ema.load_state_dict(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    history, step, start = [], 0, time.process_time()
    print(f"Bayes estimate at t = {args.t}: {probe.bayes}", flush=True)
    while time.process_time() - start < 60 * args.budget_minutes:
        videos = [dataset[int(i)] for i in rng.integers(0, len(dataset), args.videos_per_step)]
        if args.from_frames > NUM_FRAMES:  # 15 frames in order, the rest dropped unseen
            videos = [v[np.sort(rng.choice(args.from_frames, NUM_FRAMES, replace=False))] for v in videos]
        t = torch.full((len(videos),), args.t) if args.times == "fixed" else torch.rand(len(videos))
        noisy = [ti * v + (1 - ti) * torch.randn_like(v) for ti, v in zip(t, videos)]
        estimate = clean_estimates(model, noisy, [torch.full((NUM_FRAMES,), float(ti)) for ti in t])
        error = (torch.cat(estimate) - torch.cat(videos)).square()
        if args.weighting == "trainer":  # the velocity error (X̂¹ − X¹) / (1 − t), squared and weighted
            times = t.repeat_interleave(NUM_FRAMES)
            weight = model.velocity_loss_weight(times)
            error = error * ((1 if weight is None else weight) / (1 - times).square())[:, None, None, None]
        loss = error.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 1 - 0.999)
        step += 1
        if step % args.eval_every == 0:
            history.append({"step": step, "cpu_seconds": round(time.process_time() - start, 1), **probe.network(ema)})
            print(history[-1], flush=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("quick", "out")},
              "parameters": sum(p.numel() for p in model.parameters()), "steps": step,
              "bayes": probe.bayes, "network": probe.network(ema), "history": history}
    if args.num_samples:  # does a denoiser this good sample videos on the manifold?
        output = fe.sampling.sample_full_sequence(ema, num_frames=NUM_FRAMES, num_videos=args.num_samples,
                                                  steps=args.sample_steps, generator=torch.Generator().manual_seed(0),
                                                  progress=False)
        result["samples"] = {"num_samples": args.num_samples, "steps": args.sample_steps,
                             **frame_figures(held_out, output.videos)}  # (``dataset`` may allow 30 frames only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = (f"{args.variant}_{args.times}" + ("_trainer_weights" if args.weighting == "trainer" else "")
            + (f"_from{args.from_frames}" if args.from_frames > NUM_FRAMES else "")
            + (f"_seed{args.seed}" if args.seed else ""))
    save_text(out / f"{name}.json", json.dumps(result, indent=2))
    ema.save_pretrained(out / name)  # FlowceptionDiT.from_pretrained reads it back
    print(json.dumps({k: result[k] for k in ("steps", "bayes", "network", "samples") if k in result}))


if __name__ == "__main__":
    main()
