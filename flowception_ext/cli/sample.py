"""``flowception sample`` and ``flowception eval``: generate videos from a checkpoint (Flowception's
sampler, or a baseline's for a baseline checkpoint), and score videos with FVD, PSNR and SSIM."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..tasks import TASKS
from . import common
from .common import fail


def _sampling_steps(p: argparse.ArgumentParser, default: int, help: str) -> None:
    p.add_argument("--sampling-steps", type=common.int_at_least(1), default=default, help=help)
    # the name before 0.2 (it clashed with train's --steps, the optimizer steps)
    p.add_argument("--steps", type=common.int_at_least(1), default=None, dest="deprecated_steps",
                   help=argparse.SUPPRESS)


def _steps(args: argparse.Namespace) -> int:
    if args.deprecated_steps is not None:
        print("flowception: warning: --steps is deprecated here; use --sampling-steps", file=sys.stderr)
        return args.deprecated_steps
    return args.sampling_steps


def add_sample_parser(sub, parent: argparse.ArgumentParser) -> None:
    I = common.int_at_least
    p = sub.add_parser("sample", parents=[parent], help="generate videos from a trained model",
                       formatter_class=common.HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a model directory, a checkpoint, or a run directory (its latest checkpoint)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="EMA or raw weights of a checkpoint")
    p.add_argument("--task", type=common.task_name, default="unconditional", metavar="{" + ",".join(TASKS) + "}",
                   help="what is given: nothing, the first frame, keyframes to interpolate, or a video to extend")
    p.add_argument("--context", nargs="+", default=None, metavar="FILE",
                   help="the given frames (images, videos, .npy/.safetensors tensors), all of them for interpolation "
                        "and extension, the first for image-to-video (default: held-out videos of the training "
                        "dataset)")
    p.add_argument("--num-videos", type=I(1), default=8, help="videos to generate")
    _sampling_steps(p, 100, "Flowception and full-sequence: 1/h, the steps of the global time; autoregressive: "
                            "steps per frame")
    p.add_argument("--n-start", type=I(0), default=None,
                   help="noise frames at the start (default: 1 without context, 0 with context)")
    p.add_argument("--insertion", default="bernoulli", choices=("bernoulli", "poisson"),
                   help="at most one frame per slot and step (bernoulli) or several (poisson)")
    p.add_argument("--kappa", type=common.schedule_spec("kappa"), default=None,
                   help="insertion scheduler κ, as flowception train's --kappa (default: the one the model was "
                        "trained with, else linear)")
    p.add_argument("--rate-guidance", type=common.positive_float, default=1.0,
                   help="guidance scale of the insertion rates (1: none)")
    p.add_argument("--max-frames", type=I(1), default=256, help="cap on the frames of a video")
    p.add_argument("--num-frames", type=I(1), default=None,
                   help="baseline checkpoints (full-sequence, autoregressive): the frames of each video, "
                        "context included; required for them")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the sampling noise (a CPU generator: the same on every device) and of the "
                        "held-out videos that give the context")
    p.add_argument("--out", required=True, help="output directory (videos, figures, summary.json)")
    p.add_argument("--format", default="gif", choices=("gif", "mp4"), help="video file format (mp4 needs imageio-ffmpeg)")
    p.add_argument("--fps", type=common.positive_float, default=8, help="frames per second of the written videos")
    p.add_argument("--scale", type=I(0), default=1,
                   help="nearest-neighbour upscaling of the written videos (1: the frames' own size; 0: the "
                        "smallest factor giving at least 64 pixels a side)")
    p.add_argument("--device", type=common.device, default=common.default_device(),
                   help="device to sample on (cpu, cuda, cuda:1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)


def add_eval_parser(sub, parent: argparse.ArgumentParser) -> None:
    I = common.int_at_least
    p = sub.add_parser("eval", parents=[parent], help="FVD, PSNR, SSIM of generated videos against reference videos",
                       formatter_class=common.HelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--generated", help="folder of generated videos (video or tensor files)")
    source.add_argument("--checkpoint", help="sample the videos from this model, checkpoint or run directory")
    p.add_argument("--reference", required=True, help="folder of reference videos")
    p.add_argument("--metrics", default="fvd", help="comma-separated: fvd, psnr, ssim (psnr/ssim pair videos by order)")
    p.add_argument("--out", default="eval.json", help="JSON file with one key per metric")
    p.add_argument("--features", default="logits", choices=("logits", "pool"),
                   help="I3D statistics of FVD: the 400 logits (the original FVD) or the 1024 pooled features")
    p.add_argument("--i3d-frames", type=I(9), default=16, help="frames per video fed to I3D (at least 9)")
    p.add_argument("--num-frames", type=I(9), default=None, dest="deprecated_num_frames", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=I(1), default=8, help="videos per I3D batch")
    p.add_argument("--task", type=lambda t: common.task_name(t, TASKS[:3]), default="unconditional",
                   metavar="{" + ",".join(TASKS[:3]) + "}",
                   help="with --checkpoint: unconditional, or given the reference videos' first frame "
                        "(image_to_video) or first and last frames (interpolation)")
    p.add_argument("--num-videos", type=I(1), default=None,
                   help="with --checkpoint: videos to sample (default: as many as the reference)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="with --checkpoint: EMA or raw weights")
    _sampling_steps(p, 100, "with --checkpoint: 1/h, the steps of the global time")
    p.add_argument("--max-frames", type=I(1), default=256, help="with --checkpoint: cap on the frames of a video")
    p.add_argument("--seed", type=int, default=0, help="with --checkpoint: seed of the sampling noise")
    p.add_argument("--device", type=common.device, default=common.default_device(), help="device to sample on")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)


# ---- sample -----------------------------------------------------------------------------------


def _load_frames(path: str) -> torch.Tensor:
    """Frames ``[n, C, H, W]`` in [-1, 1] from an image/video file or a .npy/.safetensors tensor."""
    p = Path(path)
    if not p.is_file():
        fail(f"--context: {p} does not exist")
    try:
        if p.suffix in (".npy", ".safetensors"):
            from ..data.folders import read_tensor_video

            return read_tensor_video(p)
        from ..io import load_video

        return load_video(p)
    except ImportError as exc:
        fail(f"--context: reading {p} needs {exc.name or 'imageio'}: pip install flowception_ext[video]")
    except Exception as exc:  # the decoders' many error types
        fail(f"--context: cannot read {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def _contexts(args, model, task: str, num_videos: int):
    """One Context per video for the task, from --context files or from the model's dataset."""
    from ..sampling import Context

    if task == "unconditional":
        if args.context:
            fail("--context: the unconditional task takes no context; choose --task")
        return None
    expected = (model.config.in_channels, *model.config.frame_size)
    if args.context:
        frames = torch.cat([_check_frames(_load_frames(f), f, expected) for f in args.context])
        if task == "interpolation" and frames.shape[0] < 2:
            fail("--context: interpolation needs at least 2 keyframes, got 1 frame")
        return [Context.for_task(task, frames)] * num_videos
    spec = model.config.extra.get("dataset")
    if spec is None:
        fail(f"--task {task} needs --context FILES (this model does not name its training dataset)")
    options = {k: v for k, v in model.config.extra.get("video_folder", {}).items() if k in common.VIDEO_OPTIONS}
    # synthetic data: held-out videos; a folder: other clips (another seed) of its videos
    dataset = common.make_dataset(spec, num_videos=num_videos, seed=args.seed + 10_000, **options)
    out = []
    for i in range(num_videos):
        # a folder may hold fewer videos than asked for: go round it again, with other clips
        video = dataset[i % len(dataset), i // len(dataset)]
        video = video[0] if isinstance(video, tuple) else video
        given = {"image_to_video": video[:1], "interpolation": video[[0, -1]],
                 "extension": video[: max(1, video.shape[0] // 2)]}[task]
        out.append(Context.for_task(task, given))
    return out


def _check_frames(frames: torch.Tensor, path: str, expected: tuple[int, int, int]) -> torch.Tensor:
    if tuple(frames.shape[1:]) != expected:
        got, want = "×".join(map(str, frames.shape[1:])), "×".join(map(str, expected))
        fail(f"--context: {path} has frames of C×H×W = {got}; the model makes {want}")
    return frames


def _generate(model, contexts, task: str, args, num_videos: int, steps: int, num_frames: int | None = None):
    """The samples of Flowception's sampler, or of the baseline the checkpoint was trained as
    (``num_frames`` frames a video)."""
    from ..sampling import sample, sample_autoregressive, sample_full_sequence

    generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same noise on every device
    objective = common.model_objective(model)
    progress = not args.no_progress
    if objective == "flowception":
        # Training makes the given first frame the first starting frame, so with context no extra
        # noise frame is added at the start unless asked for.
        n_start = args.n_start if getattr(args, "n_start", None) is not None else (1 if contexts is None else 0)
        return sample(model, contexts, num_videos=num_videos, n_start=n_start, steps=steps,
                      insertion=getattr(args, "insertion", "bernoulli"),
                      kappa=common.schedule(args.kappa, "kappa") if getattr(args, "kappa", None) else None,
                      rate_guidance=getattr(args, "rate_guidance", 1.0), max_frames=args.max_frames,
                      generator=generator, progress=progress)
    if task == "interpolation":
        fail(f"--task interpolation: this is a {objective} checkpoint, which continues given first frames only "
             "(tasks unconditional, image_to_video, extension)")
    if num_frames is None:
        fail(f"--num-frames: this is a {objective} checkpoint, which makes videos of a length fixed in advance; "
             "give --num-frames")
    longest = max((len(c) for c in contexts), default=0) if contexts else 0
    if num_frames <= longest:
        fail(f"--num-frames {num_frames} leaves nothing to generate after the {longest} given frames")
    if objective == "full_sequence":
        return sample_full_sequence(model, contexts, num_frames=num_frames, steps=steps, num_videos=num_videos,
                                    generator=generator, progress=progress)
    return sample_autoregressive(model, contexts, num_frames=num_frames, steps_per_frame=steps,
                                 num_videos=num_videos, generator=generator, progress=progress)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..io import save_video
    from ..viz import plot_insertion_order, plot_length_histogram

    steps = _steps(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        fail(f"--out: {out} is a file, not a directory")
    model, source, weights = common.load_model(args.checkpoint, args.weights, args.device)
    objective = common.model_objective(model)
    if objective == "flowception" and args.num_frames is not None:
        fail("--num-frames applies to baseline checkpoints; a Flowception model chooses each video's length "
             "(cap it with --max-frames)")
    contexts = _contexts(args, model, args.task, args.num_videos)
    output = _generate(model, contexts, args.task, args, args.num_videos, steps, args.num_frames)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for i, video in enumerate(output.videos):
            paths.append(str(save_video(video, out / f"video_{i:03d}.{args.format}", fps=args.fps,
                                        scale=args.scale or None)))
    except ImportError as exc:
        fail(f"--format {args.format}: writing it needs {exc.name or 'imageio'}: pip install flowception_ext[video]")
    summary = {"checkpoint": str(source), "weights": weights, "objective": objective, "task": args.task,
               "sampling_steps": steps, "lengths": output.lengths, "max_frames_hit": output.max_frames_hit,
               "model_evaluations": output.num_model_evals, "videos": paths}
    if "kappa" in output.info:
        summary["kappa"] = output.info["kappa"]
    try:
        if objective == "flowception":
            summary["insertion_order_figure"] = str(plot_insertion_order(output, out / "insertion_order.png", video=0))
        summary["length_histogram"] = str(plot_length_histogram(output.lengths, out / "lengths.png"))
    except ImportError:  # figures need matplotlib (the viz extra)
        print("flowception: warning: no figures without matplotlib (pip install flowception_ext[viz])",
              file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("lengths", "insertion_order_figure", "length_histogram") if k in summary}))
    return 0


# ---- eval -------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.evaluate import METRICS, evaluate, read_videos

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        fail(f"--metrics: expected a comma-separated subset of {','.join(METRICS)}, got {args.metrics!r}")
    steps = _steps(args)
    if args.deprecated_num_frames is not None:
        print("flowception: warning: eval's --num-frames is deprecated; use --i3d-frames", file=sys.stderr)
        args.i3d_frames = args.deprecated_num_frames

    def read(option: str, directory: str):
        try:
            return read_videos(directory)
        except (ValueError, OSError) as exc:
            fail(f"{option}: {exc}")

    reference = read("--reference", args.reference)
    generated = read("--generated", args.generated) if args.generated else None
    if generated is None:  # sample from the checkpoint, conditioned on the reference videos for a task
        from ..sampling import Context

        model, _, _ = common.load_model(args.checkpoint, args.weights, args.device)
        num = args.num_videos or len(reference)
        contexts = None
        if args.task != "unconditional":
            picks = {"image_to_video": lambda v: v[:1], "interpolation": lambda v: v[[0, -1]]}[args.task]
            contexts = [Context.for_task(args.task, picks(reference[i % len(reference)])) for i in range(num)]
        lengths = sorted(v.shape[0] for v in reference)  # a baseline makes the references' median length
        output = _generate(model, contexts, args.task, args, num, steps, lengths[len(lengths) // 2])
        generated = [v.float().cpu() for v in output.videos]
    try:
        result = evaluate(generated, reference, metrics, features=args.features, num_frames=args.i3d_frames,
                          batch_size=args.batch_size, progress=not args.no_progress)
    except FileNotFoundError as exc:  # no I3D weights
        fail(str(exc))
    except ValueError as exc:
        fail(f"eval: {exc}")
    result["settings"].update({"generated": args.generated, "checkpoint": args.checkpoint, "reference": args.reference})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: (v["mean"] if isinstance(v, dict) and "mean" in v else v) for k, v in result.items()
                      if k != "settings"}))
    return 0
