"""``flowception train``: the run configuration (flags, ``--config`` files, the record a run keeps
of it), honest resuming with ``--override``, and the training itself.

A run's configuration has four sections, each key named as its flag (``--frames-per-batch`` is
``training.frames_per_batch``)::

    data:      dataset, num_videos, data_seed and a video folder's clip options
    model:     preset, patch_size, window, length_conditioning, prediction, mlp, rope_frame_scale,
               rope_frame_dims, clean_min_gap
    objective: objective, tasks, p_uncond, kappa, time_distribution
    training:  steps, lr, warmup, ema_decay, frames_per_batch, grad_accum, seed, bf16,
               num_workers, log_every, checkpoint_every, preview_every, logger

Values come from the defaults, then ``--config FILE`` (YAML or JSON), then the flags. A new run
writes the result to ``<out>/run_config.json``, itself a valid ``--config``. ``--resume`` takes the
configuration from there: a flag (or file value) that differs from it is refused unless it leaves
the weights alone (:data:`FREE`); ``--override key=value`` changes a training or objective value
on purpose, recorded in ``run_config.json``, ``overrides.jsonl`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..callbacks import LOGGERS
from ..checkpoint import save_text
from . import common
from .common import fail

RUN_CONFIG = "run_config.json"
SECTIONS = ("data", "model", "objective", "training")
# Keys that may differ on --resume without an override: they do not change the weights.
FREE = ("num_workers", "logger", "log_every", "checkpoint_every", "preview_every")
# Sections --override may change (the data and the model define the run).
OVERRIDABLE = ("objective", "training")

DEFAULT_PATCH = {"toy-coloring": 3, "toy-coloring:stride": 3, "toy-coloring:rotation": 3, "moving-shapes": 4}

# dest -> (section, default) and dest -> its argparse action; filled by add_train_parser.
OPTIONS: dict[str, tuple[str, Any]] = {}
ACTIONS: dict[str, argparse.Action] = {}


def _loggers(text) -> list[str]:
    names = text if isinstance(text, list) else [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in LOGGERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(LOGGERS)}, got {text!r}")
    return names


def _override(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value (e.g. lr=1e-4), got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def add_train_parser(sub, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser("train", parents=[parent], help="train a model (or a baseline) on a dataset",
                       formatter_class=common.HelpFormatter,
                       description="Train a model. Each run-configuration value comes from its default, then "
                                   "--config, then its flag; a run records them in <out>/run_config.json, and "
                                   "--resume continues with that record.")
    groups = {name: p.add_argument_group(f"{name} (run configuration: {name}.*)") for name in SECTIONS}

    def option(section: str, flag: str, default, help: str, **kwargs) -> None:
        # Defaults are applied by resolve() (defaults < --config < flags), so argparse records
        # only what was typed; the help still shows them.
        dest = flag[2:].replace("-", "_")
        OPTIONS[dest] = (section, default)
        shown = default if not isinstance(default, (dict, list)) else _show(default)
        if default is not None and default is not False:
            help += f" (default: {shown})"
        ACTIONS[dest] = groups[section].add_argument(flag, default=argparse.SUPPRESS, help=help, **kwargs)

    I = common.int_at_least
    option("data", "--dataset", None, "toy-coloring[:stride|:rotation], moving-shapes or folder:PATH (tensor or "
           "video files, subfolders included); required")
    option("data", "--num-videos", 4096, "size of a synthetic dataset", type=I(1))
    option("data", "--data-seed", 0, "seed of a synthetic dataset, or of a video folder's clip lengths, windows "
           "and crops", type=int)
    option("data", "--frame-size", None, "video files: crop each frame to the target's aspect ratio and resize it "
           "to S×S or H×W (needed when the videos' sizes differ; default: the videos' own size)",
           type=common.frame_size, metavar="S|HxW")
    option("data", "--crop", None, "video files: where that crop lies, centred or drawn anew each epoch "
           "(default: center)", choices=("center", "random"))
    option("data", "--max-frames", None, "video files: longest clip; longer videos give a window starting at a "
           "random frame each epoch (default: whole videos)", type=I(1))
    option("data", "--min-frames", None, "video files: shortest clip; each item's length is drawn uniformly from "
           "--min-frames up to --max-frames or its video's length (default: every clip as long as allowed)",
           type=I(1))
    option("data", "--frame-stride", None, "video files: keep every N-th frame (default: 1)", type=I(1))
    option("data", "--fps", None, "video files: resample every video to this frame rate (instead of "
           "--frame-stride)", type=common.positive_float)
    option("data", "--clips-per-video", None, "video files: dataset items per video, each with its own length "
           "and window (default: 1)", type=I(1))
    option("model", "--preset", "tiny", "model size", choices=("tiny", "small", "base", "large", "paper"))
    option("model", "--patch-size", None, "patch side (default: 3 for toy-coloring, 4 for moving-shapes, 2 for "
           "tensor files; for video files the largest that leaves at least 8 patches a side)", type=I(1))
    option("model", "--window", None, "attention window in frames (default: all frames)", type=I(0))
    option("model", "--length-conditioning", False, "embed each video's frame count and each frame's index "
           "(bidirectional objectives only)", action="store_true")
    option("model", "--prediction", "velocity", "what the network outputs: the velocity, or the clean frame "
           "(x-prediction)", choices=("velocity", "clean"))
    option("model", "--mlp", "gelu", "feed-forward layers: GELU (DiT's) or SwiGLU (the reference code's), same "
           "parameters", choices=("gelu", "swiglu"))
    option("model", "--rope-frame-scale", 1.0, "multiplier on the frame index in the rotary embedding (the reference "
           "code uses 20)", type=common.positive_float)
    option("model", "--rope-frame-dims", None, "head dims of the rotary frame axis, even (default: a third of the "
           "head dim)", type=I(0))
    option("model", "--clean-min-gap", 0.05, "with --prediction clean: the floor on 1 − t in the weight of the "
           "clean-frame error (1: unweighted)", type=common.positive_float)
    option("objective", "--objective", "flowception", "what to train: Flowception, or a baseline on the same "
           "backbone", choices=("flowception", "full_sequence", "autoregressive"))
    option("objective", "--tasks", {"unconditional": 1.0}, "task mixture, e.g. unconditional=0.5,"
           "image_to_video=0.3,interpolation=0.2", type=common.task_mixture, metavar="TASK=P,...")
    option("objective", "--p-uncond", 0.1, "conditioning dropout probability", type=common.probability)
    option("objective", "--kappa", "linear", "Flowception's insertion scheduler κ: linear, cosine, polynomial[:power=P] "
           "or early[:power=P] (frames inserted early; the sampler uses the same)", type=common.schedule_spec("kappa"))
    option("objective", "--time-distribution", "logit_normal", "Flowception's law of s in τ_g = s·τ_max: "
           "logit_normal[:mean=M,std=S,uniform_fraction=Q] or uniform", type=common.schedule_spec("time"))
    option("training", "--steps", 1000, "optimizer steps in all (the LR schedule spans them)", type=I(1))
    option("training", "--lr", 3e-4, "peak learning rate (AdamW)", type=common.positive_float)
    option("training", "--warmup", 50, "warm-up steps", type=I(0))
    option("training", "--ema-decay", 0.999, "decay of the EMA of the weights", type=common.probability)
    option("training", "--frames-per-batch", 256, "frame budget of a micro-batch", type=I(1))
    option("training", "--grad-accum", 1, "gradient accumulation steps", type=I(1))
    option("training", "--seed", 0, "seed of the initialisation, data order and noise", type=int)
    option("training", "--bf16", False, "bf16 autocast", action="store_true")
    option("training", "--num-workers", 0, "DataLoader processes loading the batches (0: the training process); "
           "the results do not depend on it", type=I(0))
    option("training", "--log-every", 10, "steps between logged records", type=I(1))
    option("training", "--checkpoint-every", 200, "steps between checkpoints", type=I(1))
    option("training", "--preview-every", 0, "steps between sampled preview videos, sent to the loggers "
           "(0: none)", type=I(0))
    option("training", "--logger", ["jsonl"], f"where records go, a comma-separated subset of {','.join(LOGGERS)} "
           "(metrics.jsonl; <out>/tensorboard; Weights & Biases, honouring WANDB_MODE=offline)", type=_loggers)

    run = p.add_argument_group("this invocation (not part of the run configuration)")
    run.add_argument("--out", help="run directory (run_config.json, checkpoints, metrics.jsonl); required")
    run.add_argument("--config", help="a run configuration file (YAML or JSON; a run's run_config.json is one); "
                                      "flags override its values")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved run configuration (YAML) and exit without training")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its latest intact checkpoint, with its recorded "
                          "configuration")
    run.add_argument("--override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                     help="with --resume: change a recorded objective or training value on purpose, e.g. "
                          "--override lr=1e-4 (repeatable; recorded in the run)")
    run.add_argument("--stop-after", type=I(1), default=None,
                     help="stop (with a checkpoint) at this step; the LR schedule still spans --steps")
    run.add_argument("--threads", type=I(0), default=0, help="torch threads (0: torch's default)")
    run.add_argument("--device", type=common.device, default=common.default_device(),
                     help="device to train on, e.g. cpu, cuda, cuda:1; under torchrun, cuda means "
                          "cuda:LOCAL_RANK (NCCL), cpu means gloo. Checkpoints are device-independent")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return p


# ---- the run configuration --------------------------------------------------------------------


def _show(value) -> str:
    """A value as typed on the command line."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v:g}" for k, v in value.items())
    if isinstance(value, list):
        return ("x" if all(isinstance(v, int) for v in value) and len(value) == 2 else ",").join(map(str, value))
    return str(value)


def _canonical(value):
    return json.loads(json.dumps(value))


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _coerce(dest: str, value, where: str):
    """A value from a file or an override, checked and converted as its flag would be."""
    action = ACTIONS[dest]
    default = OPTIONS[dest][1]
    if value is None and default is None:
        return None
    try:
        if isinstance(action, argparse._StoreTrueAction):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
            return value
        if action.type is None and not isinstance(value, str):
            raise argparse.ArgumentTypeError(f"expected a string, got {value!r}")
        if (isinstance(value, str) or action.type in (common.task_mixture, _loggers, common.frame_size)
                or getattr(action.type, "takes_mappings", False)):
            value = action.type(value) if action.type is not None else value
        elif action.type is not None:
            kind = int if action.type is int or getattr(action.type, "kind", None) is int else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
                raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
            value = action.type(str(value))
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(action.choices)}, got {value!r}")
    except argparse.ArgumentTypeError as exc:
        fail(f"{where}: {exc}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """The values of a run configuration file, by key (checked; unknown keys refused by name)."""
    file = Path(path)
    if not file.is_file():
        fail(f"--config: {file} does not exist")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        fail(f"--config: {file} is YAML, which needs PyYAML (pip install pyyaml); or write it as JSON")
    except Exception as exc:  # the parsers' own error types
        fail(f"--config: {file} is not valid {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'}: "
             f"{str(exc).splitlines()[0]}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        fail(f"--config: {file} must hold a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    values: dict[str, Any] = {}
    for section, entries in data.items():
        if section not in SECTIONS:
            fail(f"--config: {file}: unknown section {section!r}; expected {', '.join(SECTIONS)}")
        if not isinstance(entries, dict):
            fail(f"--config: {file}: section {section} must be a mapping, got {type(entries).__name__}")
        for key, value in entries.items():
            dest = str(key).replace("-", "_")
            if dest not in OPTIONS:
                fail(f"--config: {file}: unknown key {section}.{key}; the {section} keys are "
                     f"{', '.join(d for d, (s, _) in OPTIONS.items() if s == section)}")
            if OPTIONS[dest][0] != section:
                fail(f"--config: {file}: {key} belongs in section {OPTIONS[dest][0]}, not {section}")
            values[dest] = _coerce(dest, value, f"--config: {file}: {section}.{key}")
    return values


def nested(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run configuration by section (the form of files and of ``run_config.json``)."""
    return {section: {d: _canonical(values[d]) for d, (s, _) in OPTIONS.items() if s == section} for section in SECTIONS}


def resolve(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, list]]:
    """The run configuration (by key) and the overrides applied (``{key: [old, new]}``)."""
    given = {dest: getattr(args, dest) for dest in OPTIONS if hasattr(args, dest)}
    from_file = load_config_file(args.config) if args.config else {}
    if not args.resume:
        if args.override:
            fail("--override changes a recorded run: it needs --resume (for a new run, give the flag itself)")
        return {**{d: default for d, (_, default) in OPTIONS.items()}, **from_file, **given}, {}
    recorded_file = Path(args.out) / RUN_CONFIG
    if not recorded_file.is_file():
        fail(f"--resume: {args.out} has no {RUN_CONFIG} (not a run directory of `flowception train`, or written "
             "before run configurations were recorded)")
    try:
        recorded = load_config_file(str(recorded_file))
    except common.UsageError as exc:
        fail(f"--resume: the recorded configuration is damaged: {exc}")
    values = {**{d: default for d, (_, default) in OPTIONS.items()}, **recorded}
    for dest, value in {**from_file, **given}.items():
        if _canonical(value) == _canonical(values[dest]):
            continue
        if dest in FREE:
            values[dest] = value
            continue
        source = f"{_flag(dest)} {_show(value)}" if dest in given else f"{dest}: {_show(value)} in --config"
        hint = (f"resume without it, or change it on purpose with --override {dest}={_show(value)}"
                if OPTIONS[dest][0] in OVERRIDABLE and dest != "objective" else
                f"resume without it (the {OPTIONS[dest][0]} cannot change in a run: start a new one in another --out)")
        fail(f"{source} differs from the {_show(values[dest])} this run was started with ({recorded_file}); {hint}")
    changes: dict[str, list] = {}
    for key, text in args.override:
        if key not in OPTIONS:
            fail(f"--override {key}: unknown key; the overridable keys are "
                 f"{', '.join(d for d, (s, _) in OPTIONS.items() if s in OVERRIDABLE and d != 'objective')}")
        section = OPTIONS[key][0]
        if section not in OVERRIDABLE or key == "objective":
            fail(f"--override {key}: the {section if key != 'objective' else 'objective'} defines the run and "
                 "cannot change on resume; start a new run in another --out")
        new = _coerce(key, text, f"--override {key}")
        if _canonical(new) != _canonical(values[key]):
            changes[key] = [_canonical(values[key]), _canonical(new)]
            values[key] = new
    return values, changes


def print_config(values: dict[str, Any]) -> None:
    try:
        import yaml

        print(yaml.safe_dump(nested(values), sort_keys=False).rstrip())
    except ImportError:
        print(json.dumps(nested(values), indent=2))


# ---- the command ------------------------------------------------------------------------------


def _default_patch(dataset) -> int:
    """2 (latents), or for video files the largest patch dividing the frame size that leaves at
    least 8 patches a side (64×64 pixels: 8, so 64 tokens a frame rather than 1024)."""
    if not hasattr(dataset, "options"):  # not a video folder
        return 2
    _, h, w = dataset.frame_shape
    fits = [p for p in range(1, min(h, w) // 8 + 1) if h % p == 0 and w % p == 0]
    return max(fits, default=1)


def _init_distributed(device: torch.device) -> None:
    """Under torchrun: NCCL for a CUDA --device (each process on cuda:LOCAL_RANK), else gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _build(c: dict[str, Any], args: argparse.Namespace):
    """The dataset, model and TrainConfig of a run configuration (the same for a new run and a
    resumed one, so a resume continues exactly)."""
    from ..model import FlowceptionConfig, FlowceptionDiT
    from ..noising import NoisingConfig
    from ..training import TrainConfig

    video = {k: c[k] for k in common.VIDEO_OPTIONS}
    dataset = common.make_dataset(c["dataset"], c["num_videos"], c["data_seed"], **video)
    ch, h, w = dataset.frame_shape
    patch = c["patch_size"] or DEFAULT_PATCH.get(c["dataset"]) or _default_patch(dataset)
    if h % patch or w % patch:
        fail(f"--patch-size {patch} does not divide the {h}×{w} frames of --dataset {c['dataset']}")
    if c["length_conditioning"] and c["objective"] == "autoregressive":
        fail("--length-conditioning applies to bidirectional objectives (flowception, full_sequence), "
             "not to --objective autoregressive")
    changed = [f"--{k.replace('_', '-')}" for k in ("kappa", "time_distribution") if c[k] != OPTIONS[k][1]]
    if changed and c["objective"] != "flowception":
        fail(f"{' and '.join(changed)} appl{'y' if len(changed) > 1 else 'ies'} to --objective flowception only "
             f"(how its training states are drawn), not to {c['objective']}")
    kappa = common.schedule(c["kappa"], "kappa")
    extra = {"dataset": c["dataset"], "objective": c["objective"]}
    if c["objective"] == "flowception":  # the sampler's default κ (flowception_ext.sample)
        extra["kappa"] = kappa.to_dict()
    if hasattr(dataset, "options"):  # a video folder: sampling rebuilds its clips
        extra["video_folder"] = dataset.options
    try:
        model_config = FlowceptionConfig.from_preset(
            c["preset"], in_channels=ch, frame_size=(h, w), patch_size=patch, window=c["window"],
            attention="causal" if c["objective"] == "autoregressive" else "bidirectional",
            rate_head=c["objective"] == "flowception", length_conditioning=c["length_conditioning"],
            prediction=c["prediction"], mlp=c["mlp"], rope_frame_scale=c["rope_frame_scale"],
            rope_frame_dims=c["rope_frame_dims"], clean_min_gap=c["clean_min_gap"], extra=extra)
    except ValueError as exc:
        fail(f"the model options: {exc}")
    noising = NoisingConfig(tasks=c["tasks"], p_uncond=c["p_uncond"], kappa=kappa,
                            time_distribution=common.schedule(c["time_distribution"], "time"))
    torch.manual_seed(c["seed"])
    model = FlowceptionDiT(model_config)
    config = TrainConfig(steps=c["steps"], lr=c["lr"], frames_per_batch=c["frames_per_batch"],
                         grad_accum=c["grad_accum"], num_workers=c["num_workers"], bf16=c["bf16"], seed=c["seed"],
                         objective=c["objective"], noising=noising,
                         out_dir=str(args.out), log_every=c["log_every"], checkpoint_every=c["checkpoint_every"],
                         preview_every=c["preview_every"], warmup_steps=min(c["warmup"], c["steps"]),
                         ema_decay=c["ema_decay"], progress=not args.no_progress)
    return dataset, model, config


def cmd_train(args: argparse.Namespace) -> int:
    from ..callbacks import make_loggers
    from ..training import Trainer, TrainingDiverged, latest_checkpoint

    if args.out is None and (args.resume or not args.print_config):
        fail("the following arguments are required: --out")
    if args.resume and args.out is not None:
        try:
            resume_from = latest_checkpoint(args.out)
        except ValueError as exc:
            fail(f"--resume: {exc}")
        if resume_from is None:
            fail(f"--resume: {args.out} holds no checkpoint to resume from")
    values, changes = resolve(args)
    if values["dataset"] is None:
        fail("the following arguments are required: --dataset (or data.dataset in --config)")
    if args.print_config:
        print_config(values)
        return 0
    out = Path(args.out)
    if not args.resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        fail(f"--out {out} already holds a run; continue it with --resume, or choose another --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    _init_distributed(args.device)
    dataset, model, config = _build(values, args)
    try:
        loggers = make_loggers(values["logger"], config=nested(values))
    except ImportError as exc:
        fail(f"--logger: {exc}")
    trainer = Trainer(model, dataset, config, loggers=loggers, device=args.device)
    if trainer.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if args.resume:
        with warnings.catch_warnings(record=True) as caught:  # skipped damaged checkpoints: one line each
            warnings.simplefilter("always")
            try:
                trainer.resume()
            except (ValueError, FileNotFoundError) as exc:
                fail(f"--resume: {exc}")
        for w in caught:
            print(f"flowception: {w.message}", file=sys.stderr)
        print(f"flowception: resumed from {trainer.resumed_from} at step {trainer.step}", file=sys.stderr)
        if changes:
            record = {"step": trainer.step, "override": changes}
            trainer.log(record)
            if trainer.rank == 0:
                with open(out / "overrides.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            print("flowception: overriding " + ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items()),
                  file=sys.stderr)
    if trainer.rank == 0:  # the configuration this run continues with
        save_text(out / RUN_CONFIG, json.dumps(nested(values), indent=2) + "\n")
    try:
        metrics = trainer.fit(until=args.stop_after)
    except TrainingDiverged as exc:
        print(f"flowception: {exc}", file=sys.stderr)
        return 3
    if trainer.rank == 0:
        print(json.dumps({"step": trainer.step, "checkpoint": str(latest_checkpoint(out)), **metrics}))
    return 0
