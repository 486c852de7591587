"""The backend choice (one place, by device) and the stock PyTorch backend: every op against its
reference on the CPU, forward and backward, and a tiny model trained on either backend."""

from __future__ import annotations

import itertools
import json
import random
import warnings

import pytest
import torch

import flowception_ext
from flowception_ext import FlowceptionConfig, FlowceptionDiT, PackedVideos, ops
from flowception_ext.data import ToyColoring
from flowception_ext.ops import backend as backend_module
from flowception_ext.ops import reference as ref
from flowception_ext.ops import select_backend, use_backend
from flowception_ext.training import Trainer, TrainConfig

from conftest import requires_extension

# ---- the choice -------------------------------------------------------------------------------


def _fake_build(monkeypatch, cpu: bool = True, cuda: bool = False) -> None:
    info = {**flowception_ext.build_info(), "cpu_kernels": cpu, "cuda_kernels": cuda}
    monkeypatch.setattr(flowception_ext._extension, "build_info", lambda: info)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("FLOWCEPTION_BACKEND", raising=False)
    monkeypatch.delenv("FLOWCEPTION_CUDA_KERNELS", raising=False)
    monkeypatch.setattr(backend_module, "_warned", set())


CUDA_DEVICES = [torch.device("cuda"), torch.device("cuda", 1)]


@pytest.mark.parametrize("device", CUDA_DEVICES, ids=str)
def test_cuda_defaults_to_stock_even_with_our_kernels_built(monkeypatch, device):
    _fake_build(monkeypatch, cuda=True)
    assert select_backend(device) == "stock"
    assert select_backend(device, head_dim=64) == "stock"


@pytest.mark.parametrize("device", CUDA_DEVICES, ids=str)
@pytest.mark.parametrize("how", ["env", "keyword", "context"])
def test_cuda_kernels_are_opt_in(monkeypatch, device, how):
    _fake_build(monkeypatch, cuda=True)
    if how == "env":
        monkeypatch.setenv("FLOWCEPTION_CUDA_KERNELS", "1")
        assert select_backend(device, head_dim=64) == "kernels"
    elif how == "keyword":
        assert select_backend(device, "kernels", head_dim=64) == "kernels"
    else:
        with use_backend("kernels"):
            assert select_backend(device, head_dim=64) == "kernels"
        assert select_backend(device, head_dim=64) == "stock"


def test_cuda_opt_in_falls_back_cleanly(monkeypatch):
    monkeypatch.setenv("FLOWCEPTION_CUDA_KERNELS", "1")
    _fake_build(monkeypatch, cuda=False)
    with pytest.warns(RuntimeWarning, match="not built"):
        assert select_backend(torch.device("cuda")) == "stock"
    _fake_build(monkeypatch, cuda=True)
    with pytest.warns(RuntimeWarning, match="head dims"):
        assert select_backend(torch.device("cuda"), head_dim=24) == "stock"  # the tiny preset's head dim
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per reason, not per layer
        assert select_backend(torch.device("cuda"), head_dim=24) == "stock"
        assert select_backend(torch.device("cuda"), head_dim=128) == "kernels"


def test_cpu_and_other_devices(monkeypatch):
    _fake_build(monkeypatch, cpu=True)
    assert select_backend(torch.device("cpu")) == "kernels"
    assert select_backend(torch.device("meta")) == "kernels"  # the compiled ops' fake kernels
    for name in ("mps", "xpu"):
        assert select_backend(torch.device(name)) == "stock"
    _fake_build(monkeypatch, cpu=False)
    assert select_backend(torch.device("cpu")) == "stock"
    with pytest.warns(RuntimeWarning, match="not loaded"):
        assert select_backend(torch.device("cpu"), "kernels") == "stock"


def test_stock_can_be_forced_everywhere(monkeypatch):
    _fake_build(monkeypatch, cpu=True, cuda=True)
    monkeypatch.setenv("FLOWCEPTION_CUDA_KERNELS", "1")
    assert select_backend(torch.device("cpu"), "stock") == "stock"
    with use_backend("stock"):
        assert select_backend(torch.device("cpu")) == "stock"
        assert select_backend(torch.device("cuda"), head_dim=64) == "stock"
        assert select_backend(torch.device("cpu"), "kernels") == "kernels"  # the keyword wins
    monkeypatch.setenv("FLOWCEPTION_BACKEND", "stock")
    assert select_backend(torch.device("cpu")) == "stock"
    with use_backend("auto"):
        assert select_backend(torch.device("cpu")) == "stock"  # auto: the environment decides


def test_bad_choices(monkeypatch):
    with pytest.raises(ValueError, match="backend must be 'kernels', 'stock' or 'auto'"):
        select_backend(torch.device("cpu"), "cuda")
    with pytest.raises(ValueError, match="backend must be"):
        with use_backend("fast"):
            pass
    with pytest.raises(TypeError, match="device must be a torch.device"):
        select_backend("cpu")
    monkeypatch.setenv("FLOWCEPTION_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FLOWCEPTION_BACKEND must be"):
        select_backend(torch.device("cpu"))


def test_ops_route_through_the_choice(monkeypatch):
    """With our kernels 'unavailable' every public op runs the stock backend (no torch.ops call)."""
    _fake_build(monkeypatch, cpu=False)
    monkeypatch.setattr(ops.attention, "compiled_op", None)  # a call would raise TypeError
    monkeypatch.setattr(ops.adaln, "compiled_op", None)
    monkeypatch.setattr(ops.ragged, "compiled_op", None)
    q = torch.randn(6, 2, 8)
    cu = torch.tensor([0, 2])
    ops.local_frame_attention(q, q, q, cu, 3)
    x, per_frame = torch.randn(6, 4), torch.randn(2, 4)
    ops.adaln_modulate(x, per_frame, per_frame, 3)
    ops.gated_residual(x, x, per_frame, 3)
    ops.gated_residual_adaln(x, x, per_frame, per_frame, per_frame, 3)
    frames = torch.randn(2, 1, 2, 2)
    ops.ragged_insert(frames, cu, torch.tensor([1, 0]), seed=0)
    ops.ragged_strip(frames, cu, torch.tensor([True, False]))


# ---- the stock backend against the references -------------------------------------------------


def _attention_inputs(lengths, P, H, d, seed=0, contiguous=True):
    """float64 q, k, v [T, H, d] of videos of ``lengths`` frames of P tokens, and cu_seqlens."""
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    T = int(cu[-1]) * P
    if contiguous:
        qkv = [torch.randn(T, H, d, generator=g, dtype=torch.float64) for _ in range(3)]
    else:  # slices of a fused projection, as the model passes them
        qkv = list(torch.randn(T, 3, H, d, generator=g, dtype=torch.float64).unbind(1))
    return qkv, cu


def _max_err(a, b):
    return max(((x.double() - y.double()).abs().max().item() for x, y in zip(a, b) if x.numel()), default=0.0)


def _fwd_bwd(fn, inputs, weights):
    """Outputs, and the gradients of sum(w * out) for fixed weights, in float64."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.double() * w).sum() for o, w in zip(outs, weights))
    if not loss.requires_grad:  # an empty batch: nothing to differentiate
        return [o.detach().double() for o in outs], [torch.zeros_like(t, dtype=torch.float64) for t in leaves]
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach().double() for o in outs], [g.double() for g in grads]


def _check(stock, reference, inputs64, dtype, atol_fp32=1e-5, low_precision_reference=None):
    """``stock`` against ``reference`` on ``inputs64`` cast to ``dtype``, forward and backward.
    In bf16 the error budget is twice the reference's own error against float64, or twice that of
    ``low_precision_reference`` (the math done in bf16: flash-attn's rule for fused kernels) when
    that is larger."""
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in _as_tuple(reference(*inputs64))]
    exact = _fwd_bwd(reference, inputs64, weights)
    low = [t.to(dtype) for t in inputs64]
    got = _fwd_bwd(stock, low, weights)
    ref_low = _fwd_bwd(reference, low, weights)
    if dtype == torch.float32:
        assert _max_err(got[0], ref_low[0]) <= atol_fp32, "forward"
        assert _max_err(got[1], ref_low[1]) <= atol_fp32, "backward"
    else:  # the low-precision rule: at most twice the reference's own error against float64
        budgets = [ref_low] + ([_fwd_bwd(low_precision_reference, low, weights)] if low_precision_reference else [])
        for i, what in ((0, "forward"), (1, "backward")):
            bound = 2 * max(_max_err(b[i], exact[i]) for b in budgets) + 1e-6
            assert _max_err(got[i], exact[i]) <= bound, what


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


ATTENTION_LENGTHS = {"mixed": [3, 0, 1, 5], "one_frame": [1, 1], "empty_batch": [], "empty_videos": [0, 0],
                     "long": [9, 2]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [24, 40, 64, 128])
@pytest.mark.parametrize("window", [-1, 0, 2])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", list(ATTENTION_LENGTHS), ids=str)
def test_stock_attention_matches_reference(dtype, d, window, causal, lengths):
    qkv, cu = _attention_inputs(ATTENTION_LENGTHS[lengths], 3, 2, d, seed=d + window,
                                contiguous=(d + window) % 2 == 0)

    def stock(q, k, v):
        return ops.local_frame_attention(q, k, v, cu, 3, window, causal=causal, backend="stock")

    def reference(q, k, v):
        return ref.local_frame_attention_ref(q, k, v, cu, 3, window, causal=causal)

    _check(stock, reference, qkv, dtype)
    # the model's path: no log-sum-exp, through scaled_dot_product_attention
    _check(lambda q, k, v: ops.local_frame_attention(q, k, v, cu, 3, window, causal=causal, backend="stock",
                                                     return_lse=False, max_frames=max(lengths_of(cu), default=0))[0],
           lambda q, k, v: reference(q, k, v)[0], qkv, dtype,
           low_precision_reference=lambda q, k, v: ref.local_frame_attention_ref(q, k, v, cu, 3, window, causal=causal,
                                                                                 upcast=False)[0])


def lengths_of(cu):
    return cu.diff().tolist()


@pytest.mark.parametrize("window", [-1, 1, 4])
def test_stock_attention_without_lse_and_with_max_frames(window):
    """The SDPA path (no log-sum-exp) and a given max_frames give the reference's output."""
    lengths = [6, 1, 0, 4]
    qkv, cu = _attention_inputs(lengths, 4, 2, 16, seed=3)
    qkv = [t.float() for t in qkv]
    want, _ = ref.local_frame_attention_ref(*qkv, cu, 4, window)
    for max_frames in (None, 6):
        out, lse = ops.local_frame_attention(*qkv, cu, 4, window, backend="stock", return_lse=False,
                                             max_frames=max_frames)
        assert lse is None
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_stock_attention_gradcheck():
    for window, causal, lengths in ((-1, False, [3, 0, 2]), (1, True, [4, 1]), (0, False, [2])):
        qkv, cu = _attention_inputs(lengths, 2, 2, 5, seed=window + 2)
        leaves = [t.requires_grad_() for t in qkv]
        assert torch.autograd.gradcheck(
            lambda q, k, v: ops.local_frame_attention(q, k, v, cu, 2, window, causal=causal, backend="stock"), leaves)


def _adaln_inputs(frames, P, D, seed=0, contiguous=True):
    g = torch.Generator().manual_seed(seed)
    x, h = (torch.randn(frames * P, D, generator=g, dtype=torch.float64) for _ in range(2))
    if not contiguous:
        x = torch.randn(D, frames * P, generator=g, dtype=torch.float64).t()
    per_frame = [0.5 * torch.randn(frames, D, generator=g, dtype=torch.float64) for _ in range(3)]
    return x, h, per_frame


ADALN = {
    "adaln_modulate": (lambda x, h, pf: [x, pf[0], pf[1]], ops.adaln_modulate, ref.adaln_modulate_ref),
    "gated_residual": (lambda x, h, pf: [x, h, pf[2]], ops.gated_residual, ref.gated_residual_ref),
    "gated_residual_adaln": (lambda x, h, pf: [x, h, pf[2], pf[0], pf[1]], ops.gated_residual_adaln,
                             ref.gated_residual_adaln_ref),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", list(ADALN))
@pytest.mark.parametrize("frames, P, D, contiguous", [(5, 3, 24, True), (1, 1, 7, False), (0, 4, 8, True),
                                                      (4, 9, 64, False)])
def test_stock_adaln_matches_reference(dtype, name, frames, P, D, contiguous):
    pick, op, reference = ADALN[name]
    inputs = pick(*_adaln_inputs(frames, P, D, seed=D, contiguous=contiguous))
    _check(lambda *t: op(*t, P, backend="stock"), lambda *t: reference(*t, P), inputs, dtype)


def test_stock_adaln_gradcheck():
    x, h, pf = _adaln_inputs(3, 2, 5, seed=1)
    for name, (pick, op, _) in ADALN.items():
        leaves = [t.requires_grad_() for t in pick(x.clone(), h.clone(), [t.clone() for t in pf])]
        assert torch.autograd.gradcheck(lambda *t: op(*t, 2, backend="stock"), leaves), name


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_stock_ragged_ops_equal_the_kernels(dtype):
    rng = random.Random(0)
    for trial in range(5):
        lengths = [rng.randint(0, 5) for _ in range(rng.randint(0, 4))]
        cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
        n = int(cu[-1])
        frames = torch.randn(n, 2, 3, 3, dtype=torch.float64).to(dtype)[:, :, :, ::2]  # non-contiguous rows
        counts = torch.randint(0, 3, (n,))
        keep = torch.rand(n) < 0.5
        for backend_out, kernels_out in (
            (ops.ragged_insert(frames, cu, counts, seed=trial, backend="stock"),
             ops.ragged_insert(frames, cu, counts, seed=trial, backend="kernels")),
            (ops.ragged_strip(frames, cu, keep, backend="stock"), ops.ragged_strip(frames, cu, keep, backend="kernels")),
        ):
            for a, b in zip(backend_out, kernels_out):
                assert torch.equal(a, b)  # bit for bit, the noise included


def test_stock_ragged_ops_check_values():
    frames = torch.randn(3, 1, 2, 2)
    with pytest.raises(ValueError, match=r"non-decreasing, but cu_seqlens\[2\] = 1 < cu_seqlens\[1\] = 2"):
        ops.ragged_strip(frames, torch.tensor([0, 2, 1, 3]), torch.ones(3, dtype=torch.bool), backend="stock")
    with pytest.raises(ValueError, match="must end at the number of frames"):
        ops.ragged_insert(frames, torch.tensor([0, 2]), torch.zeros(3, dtype=torch.int64), 0, 0, backend="stock")
    with pytest.raises(ValueError, match=r"counts must be >= 0, but counts\[1\] = -1"):
        ops.ragged_insert(frames, torch.tensor([0, 3]), torch.tensor([0, -1, 1]), 0, 0, backend="stock")
    with pytest.raises(ValueError, match=r"total_new \(5\) must equal counts.sum\(\) \(1\)"):
        ops.ragged_insert(frames, torch.tensor([0, 3]), torch.tensor([0, 0, 1]), 5, 0, backend="stock")
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        q = torch.randn(6, 1, 4)
        ops.local_frame_attention(q, q, q, torch.tensor([1, 2]), 3, backend="stock")


# ---- a model on either backend ----------------------------------------------------------------


def _losses(tmp_path, backend: str) -> list[float]:
    dataset = ToyColoring(num_videos=32, seed=0)
    c, h, w = dataset.frame_shape
    torch.manual_seed(0)
    model = FlowceptionDiT(FlowceptionConfig.from_preset("tiny", in_channels=c, frame_size=(h, w), patch_size=3))
    config = TrainConfig(steps=20, frames_per_batch=64, warmup_steps=3, log_every=1, checkpoint_every=20,
                         out_dir=str(tmp_path / backend), progress=False, lr=1e-3)
    with use_backend(backend):
        Trainer(model, dataset, config).fit()
    records = [json.loads(line) for line in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@requires_extension
def test_tiny_model_trains_the_same_on_both_backends(tmp_path, threads):
    threads(1)
    kernels, stock = _losses(tmp_path, "kernels"), _losses(tmp_path, "stock")
    assert len(kernels) == len(stock) == 20
    assert max(abs(a - b) for a, b in zip(kernels, stock)) <= 1e-4
    assert kernels[-1] < kernels[0]  # and it learns


def _random_tiny_model(**overrides) -> FlowceptionDiT:
    """The tiny preset (head dim 24) with random weights, not adaLN-Zero: at initialisation the
    gates are zero and the attention would not reach the output."""
    torch.manual_seed(0)
    model = FlowceptionDiT(FlowceptionConfig.from_preset("tiny", in_channels=2, frame_size=(4, 6), patch_size=2,
                                                         **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08)
    return model


@requires_extension
@pytest.mark.parametrize("window, attention", [(None, "bidirectional"), (2, "bidirectional"), (1, "causal")])
def test_model_forward_and_backward_match_across_backends(window, attention):
    """One forward and backward of the model as it calls the ops (no lse, max_frames given), on
    each backend: outputs and every parameter's gradient agree."""
    model = _random_tiny_model(window=window, attention=attention)
    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 6, 4]
    videos = PackedVideos.from_list([torch.randn(n, 2, 4, 6, generator=g) for n in lengths],
                                    times=[torch.rand(n, generator=g) for n in lengths])
    results = {}
    for backend in ("kernels", "stock"):
        model.zero_grad()
        with use_backend(backend):
            vel, rate = model(videos)
        w = torch.Generator().manual_seed(1)
        loss = (vel * torch.randn(vel.shape, generator=w)).sum() + (rate * torch.randn(rate.shape, generator=w)).sum()
        loss.backward()
        results[backend] = [vel.detach(), rate.detach()] + [p.grad.clone() for p in model.parameters()]
    for i, (a, b) in enumerate(zip(results["kernels"], results["stock"])):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m: f"tensor {i}: {m}")


def _count_host_reads(monkeypatch) -> list[str]:
    """Every read of a tensor's values into Python (a host sync on a GPU) from now on."""
    reads: list[str] = []
    for name in ("tolist", "item", "__bool__", "__int__", "__index__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_stock_ops_read_the_device_at_most_once(monkeypatch):
    """Ragged ops: one host read per call (their value checks) when given the output size;
    attention: one without ``max_frames`` (the check and the longest video together)."""
    frames, cu = torch.randn(5, 2, 3, 3), torch.tensor([0, 2, 5])
    counts, q = torch.tensor([1, 0, 2, 0, 0]), torch.randn(10, 2, 8)
    reads = _count_host_reads(monkeypatch)
    ops.ragged_insert(frames, cu, counts, 3, seed=1, backend="stock")
    assert len(reads) == 1, reads
    reads.clear()
    ops.ragged_strip(frames, cu, counts > 0, 2, backend="stock")
    assert len(reads) == 1, reads
    reads.clear()
    ops.local_frame_attention(q, q, q, cu, 2, window=-1, backend="stock")
    assert len(reads) == 1, reads
    reads.clear()
    ops.local_frame_attention(q, q, q, cu, 2, window=1, backend="stock", max_frames=3, return_lse=False)
    assert len(reads) <= 1, reads  # the value check, on the CPU only


# ---- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["stock", "kernels"])
def test_ops_on_cuda_match_the_references(backend):
    if backend == "kernels" and not flowception_ext.build_info()["cuda_kernels"]:
        pytest.skip("our CUDA kernels are not built")
    qkv, cu = _attention_inputs([3, 0, 5], 5, 2, 64)
    qkv = [t.float() for t in qkv]
    want, want_lse = ref.local_frame_attention_ref(*qkv, cu, 5, 2)
    out, lse = ops.local_frame_attention(*(t.cuda() for t in qkv), cu.cuda(), 5, 2, backend=backend)
    torch.testing.assert_close(out.cpu(), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(lse.cpu(), want_lse, atol=1e-4, rtol=0)
    x, h, pf = (t.float() if isinstance(t, torch.Tensor) else [p.float() for p in t] for t in _adaln_inputs(4, 3, 32))
    y = ops.gated_residual_adaln(x.cuda(), h.cuda(), *(p.cuda() for p in (pf[2], pf[0], pf[1])), 3, backend=backend)
    for a, b in zip(y, ref.gated_residual_adaln_ref(x, h, pf[2], pf[0], pf[1], 3)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-5)
    frames, counts = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
    cu = torch.tensor([0, 3, 3, 8])
    got = ops.ragged_insert(frames.cuda(), cu.cuda(), counts.cuda(), seed=5, backend=backend)
    for a, b in zip(got, ref.ragged_insert_ref(frames, cu, counts, int(counts.sum()), 5)):
        assert torch.equal(a.cpu(), b)  # the noise is bit-identical on every device
