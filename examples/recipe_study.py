"""The recipe study of docs/experiments/recipe_study.md: which differences between our ToyColoring
recipe and the reference code's matter (docs/experiments/recipe_audit.md)?

Each variant changes one factor of the baseline recipe (that of examples/length_modeling.py),
or combines several, and trains for the same CPU budget: ``--budget-minutes`` of training on one
thread (the run stops at the first step past it, so the steps reached differ by variant and
are reported). Then, on the EMA weights: the offset probe (the fraction of frames whose ring
offset the clean-frame estimate gets right, all frames noised to t = 0.4, as
examples/length_modeling.py), and ``--num-samples`` sampled videos: the on-manifold rate, the
length total-variation distance and the border misfit. ``--jobs`` variants run at once, each in
its own process with one thread.

    python examples/recipe_study.py --out runs/recipe_study                     # every variant, 20 min each
    python examples/recipe_study.py --variants baseline,patch1 --budget-minutes 5
    python examples/recipe_study.py --quick --out /tmp/rs                        # CI check (under 3 min)

A rerun reuses the finished variants in ``--out`` (delete a variant's folder to redo it).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import flowception_ext as fe
from flowception_ext.data import ToyColoring

sys.path.insert(0, str(Path(__file__).resolve().parent))
from length_modeling import frame_figures, offset_probe  # noqa: E402  (the probe and checker figures)

# The baseline recipe (examples/length_modeling.py) and each variant's changes to it: model
# fields, NoisingConfig fields, TrainConfig fields, dataset arguments and sampler arguments.
BASELINE = {
    "model": dict(patch_size=3, length_conditioning=True, prediction="clean"),
    "noising": dict(),
    "train": dict(lr=1e-3, warmup_steps=50, frames_per_batch=512),
    "data": dict(),
    "sample": dict(steps=200),
}
VARIANTS = {
    "baseline": {},
    "patch1": {"model": dict(patch_size=1)},                            # 9 pixel tokens a frame
    "rope20": {"model": dict(rope_frame_scale=20.0)},                   # frame positions × 20
    "rope20_wide": {"model": dict(rope_frame_scale=20.0, rope_frame_dims=16)},  # and 16 of 24 dims
    "start_frames": {"noising": dict(n_start=3, start_last=True)},      # frame 0, 2 more, the last
    "start_frames_ref": {"noising": dict(n_start=4, start_last=True)},  # frame 0, 3 more, the last (ref)
    "spatial200": {"model": dict(rope_spatial_scale=200.0)},            # rows, columns × 200 (ref)
    "tau_uniform": {"noising": dict(time_distribution="uniform")},
    "rate_flowing": {"train": dict(rate_slots="flowing")},
    "velocity": {"model": dict(prediction="velocity")},
    "qk_norm": {"model": dict(qk_norm=True)},
    "positive_strides": {"data": dict(directions=(1,))},
}
COMBINATIONS = {  # the reference code's toy recipe, at patch 1 (its) and patch 3 (ours)
    "reference_like": ["patch1", "rope20", "spatial200", "qk_norm", "start_frames_ref", "rate_flowing", "velocity"],
    "reference_like_patch3": ["rope20_wide", "qk_norm", "start_frames_ref", "rate_flowing", "velocity"],
}


def recipe(name: str) -> dict:
    """The baseline with the variant's changes (a combination: each of its parts' changes)."""
    parts = COMBINATIONS.get(name, [name])
    out = {k: dict(v) for k, v in BASELINE.items()}
    for part in parts:
        for section, changes in VARIANTS[part].items():
            out[section].update(changes)
    return out


class TimeBudget(fe.Callback):
    """Stop the run at the first step past ``seconds`` of training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = 0.0

    def on_fit_start(self, trainer) -> None:
        self.start = time.process_time()

    def on_step_end(self, trainer, metrics) -> None:
        if time.process_time() - self.start > self.seconds:
            trainer.stop()


def run_variant(name: str, args) -> dict:
    """Train (unless finished before), probe and sample one variant; its summary."""
    torch.set_num_threads(args.threads)
    out = Path(args.out) / name
    summary_path = out / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    r = recipe(name)
    dataset = ToyColoring(num_videos=args.num_videos, seed=0, **r["data"])
    torch.manual_seed(0)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=3, **r["model"]))
    noising = fe.NoisingConfig(**r["noising"])
    config = fe.TrainConfig(steps=args.max_steps, noising=noising, out_dir=str(out), checkpoint_every=args.max_steps,
                            log_every=100, progress=False, **r["train"])
    trainer = fe.Trainer(model, dataset, config, callbacks=[TimeBudget(60 * args.budget_minutes)])
    started = time.process_time()
    trainer.fit()
    train_seconds = time.process_time() - started
    ema = fe.FlowceptionDiT.from_pretrained(fe.training.latest_checkpoint(out), weights="ema.safetensors")
    probe = offset_probe(ema, dataset, times=(0.4,))
    n_start = noising.n_start + int(noising.start_last)  # start as training does: frame 0, extra ones, the last
    output = fe.sample(ema, num_videos=args.num_samples, steps=r["sample"]["steps"], n_start=n_start,
                       generator=torch.Generator().manual_seed(0), progress=False)
    generated = collections.Counter(output.lengths)
    data = collections.Counter(dataset.lengths)
    tv = 0.5 * sum(abs(generated[n] / args.num_samples - data[n] / len(dataset)) for n in set(generated) | set(data))
    summary = {"variant": name, "recipe": r, "steps": trainer.step, "train_cpu_seconds": round(train_seconds, 1),
               "offset_probe_t04": probe["all_frames_at_t=0.4"]["network"],
               "offset_probe_least_squares_t04": probe["all_frames_at_t=0.4"]["least_squares_stride_fit"],
               "total_variation_distance": round(tv, 4), "num_samples": args.num_samples,
               **frame_figures(dataset, output.videos)}
    summary_path.write_text(json.dumps(summary, indent=2, default=list))
    return summary


def table(summaries: list[dict]) -> str:
    rows = ["| variant | steps | offset probe t=0.4 | on manifold | length TV | median border misfit |",
            "|---|---|---|---|---|---|"]
    for s in summaries:
        rows.append(f"| {s['variant']} | {s['steps']} | {s['offset_probe_t04']:.1%} | {s['fraction_on_manifold']:.1%} "
                    f"| {s['total_variation_distance']:.3f} | {s['video_border_misfit_quartiles'][1]:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join([*VARIANTS, *COMBINATIONS]),
                        help=f"comma-separated, from {', '.join([*VARIANTS, *COMBINATIONS])}")
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="CPU minutes of training per variant")
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="the LR schedule's length (and a cap)")
    parser.add_argument("--num-videos", type=int, default=32768, help="training videos (generated, so cheap)")
    parser.add_argument("--num-samples", type=int, default=256, help="videos sampled per variant")
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once (one thread each)")
    parser.add_argument("--threads", type=int, default=1, help="threads per variant (1: the budget's unit)")
    parser.add_argument("--out", default="runs/recipe_study")
    parser.add_argument("--quick", action="store_true", help="seconds of training, few samples: a CI check")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant in this process
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(budget_minutes=0.1, num_samples=8, num_videos=512, max_steps=200,
                            variants="baseline,patch1")
    args = parser.parse_args()
    if args.one:
        run_variant(args.one, args)
        return
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS and n not in COMBINATIONS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    # The LR schedule (cosine over max_steps) must be the same for every variant: a budget cut
    # keeps the learning rate of the schedule's start, so the comparison is at equal schedules.
    passthrough = ["--budget-minutes", str(args.budget_minutes), "--max-steps", str(args.max_steps),
                   "--num-videos", str(args.num_videos), "--num-samples", str(args.num_samples), "--threads", str(args.threads), "--out", args.out]
    running: list[subprocess.Popen] = []
    for name in names:
        while len(running) >= args.jobs:
            running = [p for p in running if p.poll() is None]
            time.sleep(1)
        running.append(subprocess.Popen([sys.executable, __file__, "--one", name, *passthrough]))
    for p in running:
        p.wait()
    summaries = []
    for name in names:
        path = Path(args.out) / name / "summary.json"
        if not path.is_file():
            raise SystemExit(f"recipe_study: variant {name} did not finish (see its output above)")
        summaries.append(json.loads(path.read_text()))
    settings = {k: getattr(args, k) for k in ("budget_minutes", "max_steps", "num_videos", "num_samples", "threads")}
    (Path(args.out) / "study.json").write_text(json.dumps({"settings": settings, "variants": summaries}, indent=2))
    print(table(summaries))


if __name__ == "__main__":
    main()
