"""Time of I3D feature extraction (FVD's cost): ``--clips`` clips of 16×224×224 through
:func:`flowception_ext.eval.i3d_features` on ``--threads`` CPU threads: fp32 in the contiguous layout, with bf16 autocast, and in the
channels-last 3-D memory format (the library's default), each timed after one warm-up batch.

    python bench/i3d_features.py --clips 64 --threads 2 --json bench/i3d_features.json

Needs the weights (``flowception fetch i3d``). Inputs are random clips: the cost does not depend
on pixel values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch

from flowception_ext.eval import I3D, i3d_features


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/i3d_features.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=64, help="clips to extract")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--batch-size", type=int, default=8, help="clips per I3D batch")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--variants", default="fp32,bf16,channels_last", help="comma-separated: fp32, bf16, channels_last")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    clips = [torch.rand(args.frames, 3, 224, 224, generator=g) * 2 - 1 for _ in range(args.clips)]
    results: dict = {"clips": args.clips, "frames": args.frames, "batch_size": args.batch_size, "threads": args.threads,
                     "torch": torch.__version__, "processor": platform.processor(), "seconds": {}}
    reference = None
    for variant in args.variants.split(","):
        model = I3D.from_pretrained(channels_last=variant == "channels_last")
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16" else contextlib.nullcontext())
        with autocast:
            i3d_features(clips[: args.batch_size], model=model, batch_size=args.batch_size, progress=False)  # warm-up
            start = time.perf_counter()
            feats = i3d_features(clips, model=model, batch_size=args.batch_size, progress=False)
            seconds = time.perf_counter() - start
        reference = feats if reference is None else reference
        results["seconds"][variant] = seconds
        results.setdefault("max_abs_logit_difference_vs_first", {})[variant] = float(abs(feats - reference).max())
        print(f"{variant}: {seconds:.1f} s for {args.clips} clips ({seconds / args.clips:.2f} s/clip)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
