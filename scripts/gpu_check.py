"""Validate an installed flowception_ext on a GPU (or, with ``--cpu``, every step that runs on a CPU).

Run through ``scripts/gpu_check.sh``, which builds and installs the package first. Steps:

* ``ops``: every op, forward and backward, fp32 and bf16, through each backend that exists on the
  device (the stock PyTorch backend, and our kernels when built), against the pure-PyTorch
  reference computed on the CPU (fp64 for the bf16 error budget);
* ``train``: ``flowception train`` of the ``tiny`` preset for 50 steps on the device;
* ``sample``: ``flowception sample`` of 8 videos from that run on the device;
* ``torchrun``: a 2-process ``torchrun`` of ``flowception train`` (NCCL on two GPUs; gloo on the
  CPU in the dry run; skipped with fewer than two GPUs);
* ``timing``: local frame attention at the attention benchmark's shapes: the stock backend
  against our kernels and against ``scaled_dot_product_attention`` with the dense block mask.

Prints one JSON object (the same keys in both modes; a step that cannot run says why under
``skipped``) and exits non-zero when a step that ran failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

import flowception_ext
from flowception_ext import ops
from flowception_ext.ops import reference as ref

ATTENTION_SHAPES = {"1x32x64": (1, 32, 64), "8x16x65": (8, 16, 65)}  # videos x frames x tokens per frame
HEADS, HEAD_DIM, WINDOW = 8, 64, 2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---- ops against their references -----------------------------------------------------------


LOW_PRECISION_BUDGET: dict[str, Callable] = {}


def _cases(g: torch.Generator) -> dict[str, tuple[Callable, Callable, list[torch.Tensor]]]:
    """Name -> (op(inputs, backend), reference(inputs), fp64 CPU inputs)."""
    lengths = torch.tensor([3, 0, 1, 5])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    frames = int(cu[-1])
    cases: dict[str, tuple[Callable, Callable, list[torch.Tensor]]] = {}
    for d in (24, 64):
        for window, causal in ((-1, False), (2, False), (1, True)):
            P = 5
            qkv = [torch.randn(frames * P, 2, d, generator=g, dtype=torch.float64) for _ in range(3)]

            def op(t, backend, cu=cu, P=P, window=window, causal=causal):
                return ops.local_frame_attention(*t, cu.to(t[0].device), P, window, causal=causal, backend=backend)

            def op_no_lse(t, backend, cu=cu, P=P, window=window, causal=causal):  # the model's call
                return ops.local_frame_attention(*t, cu.to(t[0].device), P, window, causal=causal, backend=backend,
                                                 return_lse=False, max_frames=5)[0]

            def reference(t, cu=cu, P=P, window=window, causal=causal, upcast=True):
                return ref.local_frame_attention_ref(*t, cu, P, window, causal=causal, upcast=upcast)

            name = f"local_frame_attention d={d} window={window}{' causal' if causal else ''}"
            cases[name] = (op, reference, qkv)
            # SDPA (fused, probabilities rounded to bf16) gets flash-attn's budget: the error of the
            # reference computed in bf16, when that is the larger one
            LOW_PRECISION_BUDGET[name + " no lse"] = lambda t, reference=reference: reference(t, upcast=False)[0]
            cases[name + " no lse"] = (op_no_lse, lambda t, reference=reference: reference(t)[0], qkv)
    P, D = 3, 48
    x, h = (torch.randn(frames * P, D, generator=g, dtype=torch.float64) for _ in range(2))
    per_frame = [0.3 * torch.randn(frames, D, generator=g, dtype=torch.float64) for _ in range(3)]
    cases["adaln_modulate"] = (lambda t, backend: ops.adaln_modulate(*t, P, backend=backend),
                               lambda t: ref.adaln_modulate_ref(*t, P), [x, per_frame[0], per_frame[1]])
    cases["gated_residual"] = (lambda t, backend: ops.gated_residual(*t, P, backend=backend),
                               lambda t: ref.gated_residual_ref(*t, P), [x, h, per_frame[2]])
    cases["gated_residual_adaln"] = (lambda t, backend: ops.gated_residual_adaln(*t, P, backend=backend),
                                     lambda t: ref.gated_residual_adaln_ref(*t, P), [x, h, *per_frame])
    video = torch.randn(frames, 3, 4, 4, generator=g, dtype=torch.float64)
    counts = torch.randint(0, 3, (frames,), generator=g)
    keep = torch.rand(frames, generator=g) < 0.6
    total_new, total_kept = int(counts.sum()), int(keep.sum())
    cases["ragged_insert"] = (
        lambda t, backend: ops.ragged_insert(t[0], cu.to(t[0].device), counts.to(t[0].device), total_new, 7,
                                             backend=backend)[0],
        lambda t: ref.ragged_insert_ref(t[0], cu, counts, total_new, 7)[0], [video])
    cases["ragged_strip"] = (
        lambda t, backend: ops.ragged_strip(t[0], cu.to(t[0].device), keep.to(t[0].device), total_kept,
                                            backend=backend)[0],
        lambda t: ref.ragged_strip_ref(t[0], cu, keep, total_kept)[0], [video])
    return cases


def _outputs(result: Any) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _forward_backward(fn: Callable, inputs: list[torch.Tensor], weights: list[torch.Tensor]):
    """Outputs and the gradients of sum(w * out) w.r.t. the inputs (fixed random weights w)."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = _outputs(fn(leaves))
    loss = sum((o.double() * w.to(o.device)).sum() for o, w in zip(outs, weights))
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach().double().cpu() for o in outs], [None if g is None else g.double().cpu() for g in grads]


def _max_err(a: list, b: list) -> float:
    errs = [(x - y).abs().max().item() for x, y in zip(a, b) if x is not None and y is not None and x.numel()]
    return max(errs, default=0.0)


def check_ops(device: torch.device, backends: list[str]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    results, ok = [], True
    for name, (op, reference, inputs64) in _cases(g).items():
        weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in _outputs(reference(inputs64))]
        exact = _forward_backward(reference, inputs64, weights)
        for dtype_name, dtype in DTYPES.items():
            low = [t.to(dtype) for t in inputs64]
            # the reference's own error: the same low-precision inputs through the reference on the CPU
            ref_low = _forward_backward(reference, low, weights)
            ref_err = max(_max_err(ref_low[0], exact[0]), _max_err(ref_low[1], exact[1]))
            if name in LOW_PRECISION_BUDGET and dtype != torch.float32:
                budget = _forward_backward(LOW_PRECISION_BUDGET[name], low, weights)
                ref_err = max(ref_err, _max_err(budget[0], exact[0]), _max_err(budget[1], exact[1]))
            for backend in backends:
                row: dict[str, Any] = {"op": name, "dtype": dtype_name, "backend": backend}
                try:
                    got = _forward_backward(lambda t: op(t, backend), [t.to(device) for t in low], weights)
                except Exception as exc:  # reported, not raised: the verdict lists every failure
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300])
                else:
                    if dtype == torch.float32:
                        err = max(_max_err(got[0], ref_low[0]), _max_err(got[1], ref_low[1]))
                        bound = 1e-4
                    else:  # FlashAttention's rule: within 2x the reference's own low-precision error
                        err = max(_max_err(got[0], exact[0]), _max_err(got[1], exact[1]))
                        bound = 2 * ref_err + 1e-6
                    row.update(ok=err <= bound, max_error=err, bound=bound)
                ok &= row["ok"]
                results.append(row)
    return {"ok": ok, "cases": len(results), "failed": [r for r in results if not r["ok"]],
            "backends": backends}


# ---- training, sampling, torchrun -----------------------------------------------------------


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[dict[str, Any], str]:
    """Run a command; returns its step record and its standard output."""
    start = time.perf_counter()
    # from the temporary directory: `python -m` puts the working directory on sys.path, and from a
    # checkout that would import the source tree instead of the installed package
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=tempfile.gettempdir())
    result: dict[str, Any] = {"ok": proc.returncode == 0, "seconds": round(time.perf_counter() - start, 1),
                              "command": " ".join(cmd)}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout)[-2000:]
    return result, proc.stdout


CLI = [sys.executable, "-m", "flowception_ext.cli"]
TRAIN = ["train", "--dataset", "toy-coloring", "--num-videos", "256", "--preset", "tiny",
         "--frames-per-batch", "128", "--checkpoint-every", "1000", "--log-every", "10", "--no-progress"]


def check_train(device: str, out: Path, steps: int) -> dict[str, Any]:
    result, stdout = _run([*CLI, *TRAIN, "--steps", str(steps), "--device", device, "--out", str(out)])
    if result["ok"]:
        summary = json.loads(stdout.strip().splitlines()[-1])
        result.update(step=summary.get("step"), loss=summary.get("loss"))
        result["ok"] = summary.get("step") == steps and math.isfinite(float(summary.get("loss", "nan")))
    return result


def check_sample(device: str, run: Path, out: Path, num_videos: int) -> dict[str, Any]:
    result, stdout = _run([*CLI, "sample", "--checkpoint", str(run), "--num-videos", str(num_videos), "--sampling-steps", "20",
                           "--device", device, "--out", str(out), "--no-progress"])
    if result["ok"]:
        lengths = json.loads(stdout.strip().splitlines()[-1])["lengths"]
        result.update(lengths=lengths, ok=len(lengths) == num_videos and min(lengths) >= 1)
    return result


def check_torchrun(device: str, out: Path, steps: int) -> dict[str, Any]:
    result, stdout = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "flowception_ext.cli", *TRAIN, "--steps", str(steps), "--device", device,
                           "--out", str(out)], env={"OMP_NUM_THREADS": "1"})
    if result["ok"]:
        result["step"] = json.loads(stdout.strip().splitlines()[-1]).get("step")
        result["ok"] = result["step"] == steps
    return result


# ---- timing ---------------------------------------------------------------------------------


def _time_ms(fn: Callable[[], Any], device: torch.device, rounds: int, warmup: int = 3) -> float:
    """Minimum over rounds of one call, in milliseconds (synchronising the device)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def check_timing(device: torch.device, backends: list[str], rounds: int) -> dict[str, Any]:
    rows = []
    for shape_name, (videos, frames, P) in ATTENTION_SHAPES.items():
        T = videos * frames * P
        cu = (torch.arange(videos + 1, dtype=torch.int64) * frames).to(device)
        mask = ref.local_frame_mask(frames, P, WINDOW, device=device)
        for dtype_name, dtype in DTYPES.items():
            g = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(T, HEADS, HEAD_DIM, generator=g).to(device, dtype) for _ in range(3))

            def dense(q, k, v):  # equal-length videos batched, one dense [L, L] block mask
                qb, kb, vb = (t.view(videos, frames * P, HEADS, HEAD_DIM).transpose(1, 2) for t in (q, k, v))
                return F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)

            impls = {b: (lambda q, k, v, b=b: ops.local_frame_attention(q, k, v, cu, P, WINDOW, backend=b,
                                                                      return_lse=False, max_frames=frames)[0])
                     for b in backends}  # as the model calls it
            impls["sdpa_dense_mask"] = dense
            for mode in ("fwd", "fwd+bwd"):
                row: dict[str, Any] = {"shape": shape_name, "dtype": dtype_name, "mode": mode}
                for name, impl in impls.items():
                    if mode == "fwd":
                        def call(impl=impl):
                            with torch.no_grad():
                                impl(q, k, v)
                    else:
                        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

                        def call(impl=impl, leaves=leaves):
                            impl(*leaves).float().sum().backward()
                    try:
                        row[f"{name}_ms"] = round(_time_ms(call, device, rounds), 3)
                    except Exception as exc:
                        row[f"{name}_ms"] = None
                        row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                stock = row.get("stock_ms")
                for name in impls:
                    if name != "stock" and stock and row.get(f"{name}_ms"):
                        row[f"{name}_over_stock"] = round(row[f"{name}_ms"] / stock, 3)
                rows.append(row)
    return {"ok": all(r.get(f"{b}_ms") is not None for r in rows for b in backends), "rows": rows,
            "rounds": rounds, "heads": HEADS, "head_dim": HEAD_DIM, "window": WINDOW}


# ---- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU: every step but the CUDA-only ones")
    parser.add_argument("--build", default="{}", help="JSON of the build step (written by gpu_check.sh)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and timing rounds (for the test suite)")
    parser.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    info = flowception_ext.build_info()
    report: dict[str, Any] = {"mode": "cpu" if args.cpu else "cuda", "torch": torch.__version__,
                              "torch_cuda": torch.version.cuda, "build_info": info, "build": json.loads(args.build)}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    report["gpus"] = [torch.cuda.get_device_name(i) for i in range(gpus)]
    if not args.cpu and gpus == 0:
        report.update(ok=False, error="no CUDA GPU visible (use --cpu for the dry run)")
        print(json.dumps(report, indent=1))
        return 1
    device = torch.device("cpu" if args.cpu else "cuda")
    report["device"] = str(device)
    # Our kernels on this device: the CPU kernels (cpu_kernels) or the CUDA kernels, opted in here.
    ours = info["cpu_kernels"] if args.cpu else info["cuda_kernels"]
    backends = ["stock", "kernels"] if ours else ["stock"]
    steps = 10 if args.quick else 50
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        report["ops"] = check_ops(device, backends)
        report["train"] = check_train(device.type, work / "run", steps)
        report["sample"] = (check_sample(device.type, work / "run", work / "samples", 8) if report["train"]["ok"]
                            else {"skipped": "training failed"})
        if args.cpu or gpus >= 2:
            report["torchrun"] = check_torchrun(device.type, work / "run_ddp", 4 if args.quick else 10)
        else:
            report["torchrun"] = {"skipped": f"needs two GPUs, found {gpus}"}
        report["timing"] = check_timing(device, backends, 3 if args.quick else 15)
    if not ours:
        report["ops"]["kernels_skipped"] = report["timing"]["kernels_skipped"] = (
            "our CUDA kernels are not built" if not args.cpu else "the compiled extension is not loaded")
    steps_run = [v for k, v in report.items() if k in ("build", "ops", "train", "sample", "torchrun", "timing")
                 and isinstance(v, dict) and "ok" in v]
    report["ok"] = all(v["ok"] for v in steps_run)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
