"""The recipe study of docs/experiments/recipe_study.md: which differences between our ToyColoring
recipe and the reference code's matter (docs/experiments/recipe_audit.md)?

Each variant changes one factor of the baseline recipe (that of examples/length_modeling.py),
or combines several, and trains for the same CPU budget: ``--budget-minutes`` of training on one
thread (the run stops at the first step past it, so the steps reached differ by variant and
are reported). Then, on the EMA weights: the offset probe (the fraction of frames whose ring
offset the clean-frame estimate gets right, all frames noised to t = 0.4, as
examples/length_modeling.py), and ``--num-samples`` sampled videos: the on-manifold rate, the
length total-variation distance and the border misfit. With ``--dataset shapes``: MovingShapes
image-to-video (the recipe of examples/paradigms.py as the baseline), ``--num-samples`` held-out
first frames continued, and the median consistency error, the frames within 1 px and the
Fréchet distance of motion statistics, each with a bootstrap 95 % interval. ``--jobs`` variants
run at once, each in its own process with one thread.

    python examples/recipe_study.py --out runs/recipe_study                     # every variant, 20 min each
    python examples/recipe_study.py --variants baseline,patch1 --budget-minutes 5
    python examples/recipe_study.py --dataset shapes --budget-minutes 10 --num-samples 96   # MovingShapes I2V
    python examples/recipe_study.py --quick --out /tmp/rs                        # CI check (under 3 min)
    python examples/recipe_study.py --list                                       # the variants, and what each changes

A rerun reuses the finished variants in ``--out`` (delete a variant's folder to redo it) and
continues an interrupted one from its last checkpoint, with the CPU budget it had left.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import flowception_ext as fe
from flowception_ext.checkpoint import save_text
from flowception_ext.data import ToyColoring
from flowception_ext.eval import summarise, video_features, video_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes_common as sc  # noqa: E402  (the MovingShapes data, sampling and metrics)
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
    "clean": {"model": dict(prediction="clean")},                       # (the toy baseline's already)
    "context_zero": {"model": dict(context_init="zero")},              # context channels start at 0
    "qk_norm": {"model": dict(qk_norm=True)},
    "positive_strides": {"data": dict(directions=(1,))},
    "length15": {"data": dict(allowed_lengths=(15,))},  # data: 15-frame videos only (the offset probe's length)
    "width240": {"model": dict(depth=6, hidden_size=240, num_heads=8)},  # the reference Tiny's width and depth
    "frame_dims18": {"model": dict(rope_frame_dims=18)},                # (head dim 30: 12 left for rows, columns)
    "swiglu": {"model": dict(mlp="swiglu")},                            # gated feed-forward layers, same size
    "clean_loss": {"model": dict(clean_min_gap=1.0)},                   # the clean-frame error unweighted
    "kappa_early": {"noising": dict(kappa={"name": "early", "power": 5.0})},  # half the frames in by t = 0.13
    "kappa_early20": {"noising": dict(kappa={"name": "early", "power": 20.0})},  # 99 % of them in by t = 0.21
    "poisson": {"sample": dict(insertion="poisson")},  # the sampler inserts Poisson counts, not at most one a step
    # s uniform on a quarter / half of the draws: weight back on the first states, where the length is decided
    "tau_mix25": {"noising": dict(time_distribution={"name": "logit_normal", "uniform_fraction": 0.25})},
    "tau_mix50": {"noising": dict(time_distribution={"name": "logit_normal", "uniform_fraction": 0.5})},
}
# MovingShapes image-to-video (16×16, one shape, 8–16 frames): the recipe of examples/paradigms.py
# (velocity prediction, 4×4 patches, lr 2e-3, 128 frames a step), sampled with 40 steps per frame
# from held-out first frames. The variants that change neither the data nor the patch size apply.
SHAPES_BASELINE = {
    "model": dict(patch_size=4, context_init="random"),  # (the default before this study)
    "noising": dict(tasks={"image_to_video": 1.0}),
    "train": dict(lr=2e-3, warmup_steps=50, frames_per_batch=128),
    "data": dict(),
    "sample": dict(steps=40),
}
SHAPES_VARIANTS = ("baseline", "rope20", "rope20_wide", "tau_uniform", "rate_flowing", "clean", "qk_norm", "context_zero",
                   "context_zero_clean", "context_zero_clean_tau_uniform", "context_zero_clean_qk_norm",
                   "context_zero_clean_early20", "context_zero_clean_early5", "context_zero_clean_early5_uniform")
COMBINATIONS = {
    # the reference code's toy recipe, at patch 1 (its) and patch 3 (ours)
    "reference_like": ["patch1", "rope20", "spatial200", "qk_norm", "start_frames_ref", "rate_flowing", "velocity"],
    "reference_like_patch3": ["rope20_wide", "qk_norm", "start_frames_ref", "rate_flowing", "velocity"],
    # the reference Tiny's size at patch 3, frame positions × 20 on 18 of its 30 head dims
    "width240_rope20_wide": ["width240", "rope20", "frame_dims18"],
    "rope20_wide_swiglu": ["rope20_wide", "swiglu"],  # the best toy probe so far, with gated feed-forward layers
    "rope20_wide_clean_loss": ["rope20_wide", "clean_loss"],  # and with the clean-frame error unweighted
    "rope20_wide_swiglu_kappa_early": ["rope20_wide", "swiglu", "kappa_early"],  # and frames inserted early
    "early5_uniform": ["rope20_wide", "swiglu", "kappa_early", "tau_uniform", "poisson"],
    "early20": ["rope20_wide", "swiglu", "kappa_early20", "poisson"],
    "early20_length15": ["rope20_wide", "swiglu", "kappa_early20", "poisson", "length15"],
    "early20_length15_uniform": ["rope20_wide", "swiglu", "kappa_early20", "poisson", "length15", "tau_uniform"],
    "early20_length15_clean_loss": ["rope20_wide", "swiglu", "kappa_early20", "poisson", "length15", "clean_loss"],
    "early20_uniform": ["rope20_wide", "swiglu", "kappa_early20", "tau_uniform", "poisson"],
    "early5_clean_loss": ["rope20_wide", "swiglu", "kappa_early", "poisson", "clean_loss"],
    "early5_clean_loss_mix25": ["rope20_wide", "swiglu", "kappa_early", "poisson", "clean_loss", "tau_mix25"],
    "early5_clean_loss_mix50": ["rope20_wide", "swiglu", "kappa_early", "poisson", "clean_loss", "tau_mix50"],
    # and the reference generator's strides (one direction): strides s and s + 4 no longer alias
    "early5_clean_loss_positive": ["rope20_wide", "swiglu", "kappa_early", "poisson", "clean_loss", "positive_strides"],
    "early5_clean_loss_positive_mix25": ["rope20_wide", "swiglu", "kappa_early", "poisson", "clean_loss", "positive_strides",
                                         "tau_mix25"],
    "context_zero_clean": ["context_zero", "clean"],  # MovingShapes: the best recipe measured there
    # and one more factor on top of it, for the longer MovingShapes runs
    "context_zero_clean_tau_uniform": ["context_zero", "clean", "tau_uniform"],
    "context_zero_clean_qk_norm": ["context_zero", "clean", "qk_norm"],
    "context_zero_clean_early20": ["context_zero", "clean", "kappa_early20", "poisson"],
    "context_zero_clean_early5": ["context_zero", "clean", "kappa_early", "poisson"],
    "context_zero_clean_early5_uniform": ["context_zero", "clean", "kappa_early", "poisson", "tau_uniform"],
}
# ToyColoring has no context: what changes the context channels is for MovingShapes only
SHAPES_ONLY = tuple(n for n in SHAPES_VARIANTS if "context_zero" in COMBINATIONS.get(n, [n]))


def describe(names: list[str]) -> str:
    """One line per variant: its changes to the baseline recipe, or the variants a combination joins."""
    lines = []
    for name in names:
        if name in COMBINATIONS:
            what = " + ".join(COMBINATIONS[name])
        else:
            what = "; ".join(f"{section}.{k}={v!r}" for section, c in VARIANTS[name].items() for k, v in c.items())
        lines.append(f"{name:<34} {what or '(the baseline)'}")
    return "\n".join(lines)


def recipe(name: str, baseline: dict = BASELINE) -> dict:
    """``baseline`` with the variant's changes (a combination: each of its parts' changes)."""
    parts = COMBINATIONS.get(name, [name])
    out = {k: dict(v) for k, v in baseline.items()}
    for part in parts:
        for section, changes in VARIANTS[part].items():
            out[section].update(changes)
    return out


class TimeBudget(fe.Callback):
    """Stop the run at the first step past ``seconds`` of training CPU time. The CPU time spent
    up to each checkpoint is kept in ``path``, so a run killed and started again resumes from
    its last checkpoint with the budget that checkpoint had left."""

    def __init__(self, seconds: float, path: Path) -> None:
        self.seconds = seconds
        self.path = path
        self.before = 0.0  # CPU seconds of earlier processes, up to the checkpoint resumed from
        self.start = 0.0

    def used(self) -> float:
        return self.before + time.process_time() - self.start

    def on_fit_start(self, trainer) -> None:
        if trainer.resumed_from is not None and self.path.is_file():
            record = json.loads(self.path.read_text())
            self.before = record["checkpoints"].get(trainer.resumed_from.name, 0.0)
        self.start = time.process_time()

    def on_step_end(self, trainer, metrics) -> None:
        if self.used() > self.seconds:
            trainer.stop()

    def on_checkpoint(self, trainer, path) -> None:
        record = json.loads(self.path.read_text()) if self.path.is_file() else {"checkpoints": {}}
        record["checkpoints"][Path(path).name] = round(self.used(), 2)
        save_text(self.path, json.dumps(record, indent=1))


def train_variant(model: fe.FlowceptionDiT, dataset, r: dict, out: Path, args) -> tuple[fe.FlowceptionDiT, dict]:
    """Train ``model`` for the CPU budget (continuing an interrupted run); its EMA weights and
    the steps and CPU seconds spent."""
    config = fe.TrainConfig(steps=args.max_steps, noising=fe.NoisingConfig(**r["noising"]), out_dir=str(out),
                            checkpoint_every=args.checkpoint_every, log_every=100, progress=False, seed=args.seed,
                            **r["train"])
    budget = TimeBudget(60 * args.budget_minutes, out / "cpu_seconds.json")
    trainer = fe.Trainer(model, dataset, config, callbacks=[budget])
    if fe.training.latest_checkpoint(out) is not None:  # an interrupted run: continue it
        interrupted = fe.training.resumable_checkpoint(out, model.config, config)
        if interrupted is None:
            raise ValueError(f"{out} holds checkpoints of another configuration; remove them or choose another --out")
        trainer.resume(interrupted)
    trainer.fit()
    ema = fe.FlowceptionDiT.from_pretrained(fe.training.latest_checkpoint(out), weights="ema.safetensors").eval()
    return ema, {"steps": trainer.step, "train_cpu_seconds": round(budget.used(), 1)}


def run_variant(name: str, args) -> dict:
    """Train (unless finished before) and score one variant; its summary."""
    torch.set_num_threads(args.threads)
    out = variant_dir(name, args)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    summary = (run_toy if args.dataset == "toy" else run_shapes)(name, out, args)
    summary_path.write_text(json.dumps(summary, indent=2, default=list))
    return summary


def variant_dir(name: str, args) -> Path:
    seed = f"_seed{args.seed}" if args.seed else ""
    return Path(args.out) / ((name if args.dataset == "toy" else f"shapes_{name}") + seed)


def run_toy(name: str, out: Path, args) -> dict:
    """ToyColoring: the offset probe, and sampled videos' on-manifold rate, length TV, border misfit."""
    r = recipe(name)
    dataset = ToyColoring(num_videos=args.num_videos, seed=0, **r["data"])
    torch.manual_seed(args.seed)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=3, **r["model"]))
    ema, record = train_variant(model, dataset, r, out, args)
    probe = offset_probe(ema, dataset, times=(0.4,))
    noising = fe.NoisingConfig(**r["noising"])
    n_start = noising.n_start + int(noising.start_last)  # start as training does: frame 0, extra ones, the last
    output = fe.sample(ema, num_videos=args.num_samples, n_start=n_start, kappa=noising.kappa, **r["sample"],
                       generator=torch.Generator().manual_seed(0), progress=False)
    generated = collections.Counter(output.lengths)
    data = collections.Counter(dataset.lengths)
    tv = 0.5 * sum(abs(generated[n] / args.num_samples - data[n] / len(dataset)) for n in set(generated) | set(data))
    return {"variant": name, "dataset": "toy", "recipe": r, **record,
            "offset_probe_t04": probe["all_frames_at_t=0.4"]["network"],
            "offset_probe_least_squares_t04": probe["all_frames_at_t=0.4"]["least_squares_stride_fit"],
            "offset_probe_bayes_t04": probe["all_frames_at_t=0.4"]["bayes_posterior_mean"],
            "probe_mse_t04": {k: probe["all_frames_at_t=0.4"][k] for k in ("network_mse", "bayes_mse")},
            "offset_probe_one_noise_frame": probe["one_noise_frame_among_clean"]["network"],
            "total_variation_distance": round(tv, 4), "num_samples": args.num_samples,
            **frame_figures(dataset, output.videos)}


def run_shapes(name: str, out: Path, args) -> dict:
    """MovingShapes image-to-video: ``--num-samples`` held-out first frames continued; the
    consistency metrics and the Fréchet distance with bootstrap intervals (examples/shapes_common.py)."""
    r = recipe(name, SHAPES_BASELINE)
    shape_args = argparse.Namespace(size=16, min_length=8, max_length=16, max_shapes=1, train_videos=4096,
                                    num_videos=args.num_samples, seed=0)
    train, test = sc.datasets(shape_args)
    torch.manual_seed(args.seed)
    model = fe.FlowceptionDiT(fe.FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=16, **r["model"]))
    ema, record = train_variant(model, train, r, out, args)
    real = [test[i] for i in range(len(test))]
    videos = sc.sample_flowception(ema, [fe.Context.image_to_video(v[0]) for v in real], **r["sample"],
                                   kappa=fe.NoisingConfig(**r["noising"]).kappa, seed=1,
                                   max_frames=2 * shape_args.max_length)["videos"]
    real_features = np.stack([video_features(v) for v in real])
    features = np.stack([video_features(v) for v in videos])
    metrics = summarise(video_metrics(videos), features, real_features, 1000, 0)
    return {"variant": name, "dataset": "shapes", "recipe": r, **record, "num_samples": len(real),
            "context_probe_t03": sc.context_probe(ema, real),
            **{m: metrics[m] for m in ("median_error", "frac_frames_le_1px", "frechet", "length")}}


def table(summaries: list[dict]) -> str:
    if summaries and summaries[0].get("dataset") == "shapes":
        rows = ["| variant | steps | median error, px | frames within 1 px | Fréchet distance | length "
                "| context probe ×10⁻³: own / swapped |", "|---|---|---|---|---|---|---|"]
        for s in summaries:
            probe = s["context_probe_t03"]
            rows.append(f"| {s['variant']} | {s['steps']} | {sc.fmt(s['median_error'], 2)} | "
                        f"{sc.fmt(s['frac_frames_le_1px'])} | {sc.fmt(s['frechet'], 0)} | {sc.fmt(s['length'], 1)} "
                        f"| {1e3 * probe['context_own']:.1f} / {1e3 * probe['context_swapped']:.1f} |")
        return "\n".join(rows)
    rows = ["| variant | steps | offset probe t=0.4 | one noise frame among clean | clean-frame MSE t=0.4: "
            "network / Bayes | on manifold | length TV | median border misfit |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        mse = s.get("probe_mse_t04")  # (summaries written before the Bayes estimate have none)
        mse = f"{mse['network_mse']:.4f} / {mse['bayes_mse']:.4f}" if mse else "—"
        rows.append(f"| {s['variant']} | {s['steps']} | {s['offset_probe_t04']:.1%} "
                    f"| {s['offset_probe_one_noise_frame']:.1%} | {mse} | {s['fraction_on_manifold']:.1%} "
                    f"| {s['total_variation_distance']:.3f} | {s['video_border_misfit_quartiles'][1]:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="toy", choices=("toy", "shapes"),
                        help="ToyColoring (stride motion) or MovingShapes image-to-video")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (see --list; default all)")
    parser.add_argument("--list", action="store_true", help="print the dataset's variants and what each changes, and exit")
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="CPU minutes of training per variant")
    parser.add_argument("--max-steps", type=int, default=1_000_000, help="the LR schedule's length (and a cap)")
    parser.add_argument("--num-videos", type=int, default=32768, help="training videos (generated, so cheap)")
    parser.add_argument("--num-samples", type=int, default=256, help="videos sampled per variant")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model's initialisation and of training (data and evaluation stay fixed)")
    parser.add_argument("--checkpoint-every", type=int, default=2000,
                        help="steps between checkpoints (a killed run, started again, resumes from the last)")
    parser.add_argument("--jobs", type=int, default=2, help="variants run at once (one thread each)")
    parser.add_argument("--threads", type=int, default=1, help="threads per variant (1: the budget's unit)")
    parser.add_argument("--out", default="runs/recipe_study")
    parser.add_argument("--quick", action="store_true", help="seconds of training, few samples: a CI check")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this variant in this process
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(budget_minutes=0.1, num_samples=8, num_videos=512, max_steps=200)
    args = parser.parse_args()
    if args.one:
        run_variant(args.one, args)
        return
    known = ([n for n in [*VARIANTS, *COMBINATIONS] if n not in SHAPES_ONLY] if args.dataset == "toy"
             else list(SHAPES_VARIANTS))
    if args.list:
        print(describe(known))
        return
    default = (["baseline", known[1]] if args.quick else known)  # quick: the baseline and one variant
    names = default if args.variants is None else [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {args.dataset} variants {unknown}; choose from {', '.join(known)}")
    # The LR schedule (cosine over max_steps) must be the same for every variant: a budget cut
    # keeps the learning rate of the schedule's start, so the comparison is at equal schedules.
    passthrough = ["--dataset", args.dataset, "--seed", str(args.seed),
                   "--budget-minutes", str(args.budget_minutes), "--max-steps", str(args.max_steps),
                   "--num-videos", str(args.num_videos), "--num-samples", str(args.num_samples),
                   "--checkpoint-every", str(args.checkpoint_every), "--threads", str(args.threads), "--out", args.out]
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
        path = variant_dir(name, args) / "summary.json"
        if not path.is_file():
            raise SystemExit(f"recipe_study: variant {name} did not finish (see its output above)")
        summaries.append(json.loads(path.read_text()))
    settings = {k: getattr(args, k) for k in ("dataset", "seed", "budget_minutes", "max_steps", "num_videos", "num_samples",
                                              "threads")}
    stem = f"study_{args.dataset}" + (f"_seed{args.seed}" if args.seed else "")
    (Path(args.out) / f"{stem}.json").write_text(json.dumps({"settings": settings, "variants": summaries}, indent=2))
    print(table(summaries))


if __name__ == "__main__":
    main()
