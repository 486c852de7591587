"""What the commands share: the usage error, argparse types, the help formatter, datasets and
loading a model."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import torch

from ..tasks import TASKS, canonical_task


class UsageError(Exception):
    """A mistake in what the user asked for: shown as ``flowception CMD: error: MESSAGE`` (exit 2)."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` once: not for options without a default (``None``, flags) and not
    when the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


# ---- argparse types ---------------------------------------------------------------------------


def device(text: str) -> torch.device:
    """A device that exists on this machine."""
    from .._devices import device_problem

    problem = device_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return torch.device(text)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _number(kind: type, minimum: float | None, text: str, strict: bool = False):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if minimum is not None and (value <= minimum if strict else value < minimum) or value != value:
        raise argparse.ArgumentTypeError(f"expected a value {'>' if strict else '>='} {minimum:g}, got {text!r}")
    return value


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        return _number(int, minimum, text)
    parse.__name__ = f"integer >= {minimum}"
    parse.kind = int  # type: ignore[attr-defined]  (config files: an integer, not a float)
    return parse


def positive_float(text: str) -> float:
    return _number(float, 0, text, strict=True)


def probability(text: str) -> float:
    value = _number(float, 0, text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}")
    return value


def frame_size(text) -> list[int]:
    """``S`` or ``HxW`` (or, from a config file, ``S`` or ``[H, W]``), as ``[H, W]``."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    try:
        if isinstance(text, (list, tuple)):
            size = [p if isinstance(p, int) and not isinstance(p, bool) else int("x") for p in text]
        else:
            size = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        size = []
    if len(size) not in (1, 2) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected a size S or HxW of positive integers, got {text!r}")
    return size * 2 if len(size) == 1 else size


def schedule(text, kind: str):
    """The κ scheduler (``kind="kappa"``) or law of s (``kind="time"``) of a spec
    ``name[:key=value,...]`` (``early:power=8``, ``logit_normal:uniform_fraction=0.25``) or, from a
    config file, a mapping with ``name`` (:mod:`flowception_ext.schedules`)."""
    from ..schedules import kappa_from_name, time_distribution_from_name

    build = kappa_from_name if kind == "kappa" else time_distribution_from_name
    if isinstance(text, dict):
        spec = dict(text)
    else:
        name, _, params = str(text).partition(":")
        spec = {"name": name.strip()}
        for part in filter(None, (p.strip() for p in params.split(","))):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq:
                raise argparse.ArgumentTypeError(f"expected name[:key=value,...], got {text!r}")
            try:
                spec[key] = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{key} must be a number, got {value!r}") from None
    bad = [k for k, v in spec.items() if k != "name" and (isinstance(v, bool) or not isinstance(v, (int, float))
                                                          or v != v or abs(v) == float("inf"))]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]} must be a finite number, got {spec[bad[0]]!r}")
    try:
        return build(spec)
    except TypeError:  # no name, or a parameter the class does not have
        if "name" not in spec:
            raise argparse.ArgumentTypeError(f"expected a name, got {text!r}") from None
        known = sorted(k for k in build(spec["name"]).to_dict() if k != "name")
        raise argparse.ArgumentTypeError(f"{spec['name']} takes {', '.join(known) or 'no parameters'}; got "
                                         f"{text!r}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def schedule_spec(kind: str):
    """An argparse type: a :func:`schedule` spec, returned in canonical form (the name, then the
    parameters that differ from its defaults: ``early``, ``early:power=8``), as run configurations
    record it."""
    def parse(text) -> str:
        built = schedule(text, kind)
        defaults = type(built)().to_dict()
        changed = [f"{k}={v:g}" if float(f"{v:g}") == v else f"{k}={v!r}"  # short, but exact
                   for k, v in built.to_dict().items() if k != "name" and v != defaults[k]]
        return built.name + (":" + ",".join(changed) if changed else "")
    parse.__name__ = "kappa scheduler" if kind == "kappa" else "law of s"
    parse.takes_mappings = True  # type: ignore[attr-defined]  (config files may give {name: ..., ...})
    return parse


def task_name(text: str, allowed: tuple[str, ...] = TASKS) -> str:
    """A task name (:mod:`flowception_ext.tasks`); an old spelling is translated with a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            name = canonical_task(text, "task", allowed)
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown task {text!r}; expected one of {', '.join(allowed)}") from None
    for w in caught:
        print(f"flowception: warning: {w.message}", file=sys.stderr)
    return name


def task_mixture(text) -> dict[str, float]:
    """``name=prob,...`` (or a mapping, from a config file) of training tasks summing to 1."""
    from ..tasks import TRAINING_TASKS

    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for part in str(text).split(","):
            name, eq, p = part.partition("=")
            if not eq:
                raise argparse.ArgumentTypeError(f"expected name=probability,...; got {text!r}")
            pairs.append((name.strip(), p))
    out: dict[str, float] = {}
    for name, p in pairs:
        name = task_name(name, TRAINING_TASKS)
        try:
            out[name] = float(p)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"the probability of {name} must be a number, got {p!r}") from None
        if not 0 <= out[name] <= 1:
            raise argparse.ArgumentTypeError(f"the probability of {name} must be in [0, 1], got {p!r}")
    if abs(sum(out.values()) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"the probabilities must sum to 1, got {sum(out.values()):g} ({text})")
    return out


# ---- datasets ---------------------------------------------------------------------------------


# VideoFolder's clip options, as train's --frame-size, --max-frames, ... set them.
VIDEO_OPTIONS = ("frame_size", "crop", "max_frames", "min_frames", "frame_stride", "fps", "clips_per_video")


def make_dataset(spec: str, num_videos: int = 4096, seed: int = 0, **video_options):
    """``toy-coloring`` (integer strides), ``toy-coloring:rotation`` (the paper's one-turn motion,
    which tells the length), ``moving-shapes`` or ``folder:PATH`` (tensor files, or video files
    decoded by imageio; subfolders included). ``video_options`` (:data:`VIDEO_OPTIONS`, ``None``:
    VideoFolder's default) and ``seed`` shape the clips of a folder of videos."""
    from .. import data
    from ..data.folders import list_files

    given = {k: v for k, v in video_options.items() if v is not None}
    unknown = sorted(set(given) - set(VIDEO_OPTIONS))
    if unknown:
        raise TypeError(f"make_dataset: unknown video options {unknown}; expected some of {list(VIDEO_OPTIONS)}")
    if given and not spec.startswith("folder:"):
        fail(f"--dataset {spec}: the video clip options ({', '.join(sorted(given))}) "
             "apply to folder:PATH of video files only")
    if spec in ("toy-coloring", "toy-coloring:stride", "toy-coloring:rotation"):
        motion = spec.partition(":")[2] or "stride"
        return data.ToyColoring(num_videos=num_videos, seed=seed, motion=motion)
    if spec == "moving-shapes":
        return data.MovingShapes(num_videos=num_videos, seed=seed)
    if spec.startswith("folder:"):
        path = Path(spec[len("folder:"):])
        if not path.is_dir():
            fail(f"--dataset {spec}: {path} is not a directory")
        tensors = list_files(path, data.TensorFolder.extensions)
        videos = list_files(path, data.VideoFolder.extensions)
        if tensors and videos:
            fail(f"--dataset {spec}: holds both tensor files ({tensors[0]}) and video "
                 f"files ({videos[0]}); keep one kind per folder")
        if tensors and given:
            fail(f"--dataset {spec}: the video clip options ({', '.join(sorted(given))}) "
                 "apply to video files, not to tensor files")
        try:
            return data.TensorFolder(path) if tensors else data.VideoFolder(path, seed=seed, **given)
        except (ValueError, ImportError, OSError) as exc:
            fail(f"--dataset {spec}: {exc}")
    fail(f"--dataset: unknown dataset {spec!r}; use toy-coloring[:stride|:rotation], moving-shapes or folder:PATH")


# ---- models -----------------------------------------------------------------------------------


def load_model(checkpoint: str, weights: str, device: torch.device, option: str = "--checkpoint"):
    """``(model, checkpoint directory, weights file)`` from a model directory, a checkpoint or a
    run directory (its latest checkpoint); ``weights`` is ``"ema"`` or ``"model"``."""
    from ..model import FlowceptionDiT
    from ..training import latest_checkpoint

    source = Path(checkpoint)
    if not source.exists():
        fail(f"{option}: {source} does not exist")
    if not (source / "config.json").is_file():
        try:
            found = latest_checkpoint(source)
        except ValueError as exc:
            fail(f"{option}: {exc}")
        if found is None:
            fail(f"{option}: {source} holds no model (config.json) nor checkpoints")
        source = found
    file = "ema.safetensors" if weights == "ema" and (source / "ema.safetensors").is_file() else "model.safetensors"
    try:
        model = FlowceptionDiT.from_pretrained(source, weights=file)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"{option}: cannot load {source / file}: {exc}")
    return model.to(device), source, file


def model_objective(model) -> str:
    """What a model was trained for: recorded since 0.2, else read from its heads."""
    recorded = model.config.extra.get("objective")
    if recorded is not None:
        return recorded
    if model.config.rate_head:
        return "flowception"
    return "autoregressive" if model.config.attention == "causal" else "full_sequence"
