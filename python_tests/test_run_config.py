"""`flowception train`'s run configuration: the record a run keeps, honest resumes and
--override, --config files and --print-config; the Trainer's callbacks and loggers."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from flowception_ext import data
from flowception_ext.callbacks import Callback, JsonlLogger, WandbLogger
from flowception_ext.checkpoint import load_json, load_tensors
from flowception_ext.cli import main
from flowception_ext.model import FlowceptionConfig, FlowceptionDiT
from flowception_ext.training import Trainer, TrainConfig, latest_checkpoint

RUN = ["train", "--dataset", "toy-coloring", "--num-videos", "16", "--frames-per-batch", "64", "--steps", "6",
       "--warmup", "2", "--checkpoint-every", "2", "--log-every", "2", "--no-progress"]


def checkpoint_bytes(run) -> dict[str, bytes]:
    path = latest_checkpoint(run)
    return {name: (path / name).read_bytes() for name in ("model.safetensors", "ema.safetensors",
                                                          "optimizer.safetensors")}


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_a_run_records_its_configuration_in_sections(straight):
    recorded = json.loads((straight / "run_config.json").read_text())
    assert list(recorded) == ["data", "model", "objective", "training"]
    assert recorded["data"]["dataset"] == "toy-coloring" and recorded["data"]["num_videos"] == 16
    assert recorded["training"]["steps"] == 6 and recorded["objective"]["tasks"] == {"unconditional": 1.0}
    assert load_json(latest_checkpoint(straight) / "config.json")["extra"]["objective"] == "flowception"


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_no_flags_continues_bit_identically(straight, tmp_path, workers):
    out = str(tmp_path / "run")
    assert main([*RUN, "--num-workers", str(workers), "--stop-after", "3", "--out", out]) == 0
    # nothing but the run directory: the data, model and training come from run_config.json
    assert main(["train", "--resume", "--out", out, "--no-progress"]) == 0
    assert latest_checkpoint(out).name == "step_00000006"
    assert checkpoint_bytes(tmp_path / "run") == checkpoint_bytes(straight)
    # the stop at step 3 logged a record of its own; the others are the straight run's
    assert [r["loss"] for r in records(tmp_path / "run") if r["step"] != 3] == [r["loss"] for r in records(straight)]


def test_resume_refuses_a_changed_flag_and_applies_an_override(straight, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*RUN, "--stop-after", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    for flag, value, named, hint in (
            ("--lr", "1", "--lr 1.0 differs from the 0.0003", "with --override lr=1.0"),
            ("--num-videos", "32", "--num-videos 32 differs from the 16", "cannot change in a run"),
            ("--preset", "small", "--preset small differs from the tiny", "cannot change")):
        assert main(["train", "--resume", "--out", str(out), flag, value]) == 2
        err = capsys.readouterr().err
        assert named in err and hint in err and err.count("\n") == 1, err
    # an unchanged flag and the free ones (workers, logging cadence) are fine
    assert main(["train", "--resume", "--out", str(out), "--lr", "3e-4", "--num-workers", "1", "--log-every", "1",
                 "--override", "lr=1e-4", "--stop-after", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "overriding lr 0.0003 -> 0.0001" in err
    state = load_json(latest_checkpoint(out) / "trainer_state.json")
    assert state["train_config"]["lr"] == 1e-4
    assert json.loads((out / "run_config.json").read_text())["training"]["lr"] == 1e-4
    event = [r for r in records(out) if "override" in r]
    assert event == [{"step": 2, "override": {"lr": [3e-4, 1e-4]}}]
    assert json.loads((out / "overrides.jsonl").read_text()) == event[0]
    assert [r["step"] for r in records(out) if "loss" in r] == [2, 3, 4]  # log_every 1 after the resume
    # the next resume continues with the overridden value, no flags needed
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert load_json(latest_checkpoint(out) / "trainer_state.json")["train_config"]["lr"] == 1e-4


def test_the_recorded_configuration_reproduces_the_run(straight, tmp_path):
    assert main(["train", "--config", str(straight / "run_config.json"), "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    assert checkpoint_bytes(tmp_path / "again") == checkpoint_bytes(straight)


def test_yaml_config_flags_override_it_and_print_config_round_trips(tmp_path, capsys):
    pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text("data:\n  dataset: moving-shapes\n  num-videos: 8\n"
                                       "training:\n  lr: 1e-3\n  steps: 5\n")
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--steps", "7", "--print-config"]) == 0
    printed = capsys.readouterr().out
    import yaml

    resolved = yaml.safe_load(printed)
    assert resolved["data"]["dataset"] == "moving-shapes" and resolved["data"]["num_videos"] == 8
    assert resolved["training"]["lr"] == 1e-3 and resolved["training"]["steps"] == 7  # the flag wins
    assert resolved["training"]["frames_per_batch"] == 256  # a default
    (tmp_path / "printed.yaml").write_text(printed)
    assert main(["train", "--config", str(tmp_path / "printed.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed


def test_the_recipe_study_options_reach_the_model_the_states_and_the_sampler(tmp_path, capsys):
    # the best ToyColoring recipe of docs/experiments/recipe_study.md, from the command line
    out = tmp_path / "run"
    assert main([*RUN, "--prediction", "clean", "--mlp", "swiglu", "--rope-frame-scale", "20", "--rope-frame-dims",
                 "16", "--clean-min-gap", "1", "--kappa", "early:power=5.0", "--time-distribution",
                 "logit_normal:uniform_fraction=0.25", "--out", str(out)]) == 0
    recorded = json.loads((out / "run_config.json").read_text())
    assert recorded["objective"]["kappa"] == "early"  # canonical: the default power left out
    assert recorded["objective"]["time_distribution"] == "logit_normal:uniform_fraction=0.25"
    ckpt = latest_checkpoint(out)
    model = load_json(ckpt / "config.json")
    assert (model["mlp"], model["rope_frame_scale"], model["rope_frame_dims"], model["clean_min_gap"]) == ("swiglu", 20.0, 16, 1.0)
    assert model["extra"]["kappa"] == {"name": "early", "power": 5.0}
    noising = load_json(ckpt / "trainer_state.json")["train_config"]["noising"]
    assert noising["kappa"] == {"name": "early", "power": 5.0}
    assert noising["time_distribution"]["uniform_fraction"] == 0.25
    # the sampler uses the recorded κ unless told otherwise
    for flags, kappa in (([], {"name": "early", "power": 5.0}), (["--kappa", "linear"], {"name": "linear"})):
        target = tmp_path / f"samples{len(flags)}"
        assert main(["sample", "--checkpoint", str(out), "--num-videos", "1", "--sampling-steps", "4",
                     "--no-progress", "--out", str(target), *flags]) == 0
        assert json.loads((target / "summary.json").read_text())["kappa"] == kappa
    capsys.readouterr()
    # a config file may give the mapping form; it is recorded canonically, and an override changes it
    (tmp_path / "kappa.json").write_text(json.dumps({"objective": {"kappa": {"name": "early", "power": 8}}}))
    assert main(["train", "--config", str(tmp_path / "kappa.json"), "--dataset", "toy-coloring", "--print-config"]) == 0
    assert "early:power=8" in capsys.readouterr().out
    assert main(["train", "--resume", "--out", str(out), "--override", "steps=8",
                 "--override", "kappa=early:power=8", "--no-progress"]) == 0
    assert json.loads((out / "run_config.json").read_text())["objective"]["kappa"] == "early:power=8"



def test_schedule_specs_are_recorded_exactly():
    from flowception_ext.cli.common import schedule_spec

    kappa = schedule_spec("kappa")
    assert [kappa(t) for t in ("linear", "early:power=5", "early: power = 8.0", "early:power=5.123456789")] == [
        "linear", "early", "early:power=8", "early:power=5.123456789"]
    assert schedule_spec("time")({"name": "logit_normal", "std": 1.5}) == "logit_normal:std=1.5"


def test_tensorboard_logger_writes_loss_at_every_log_step(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main([*RUN, "--logger", "tensorboard,jsonl", "--out", str(out)]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "velocity", "insertion", "grad_norm", "lr", "frames_per_s"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [2, 4, 6]
    assert [round(e.value, 5) for e in loss] == [round(r["loss"], 5) for r in records(out)]


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append(("fit_start", trainer.step))

    def on_step_end(self, trainer, metrics):
        self.calls.append(("step_end", trainer.step, sorted(metrics)))

    def on_log(self, trainer, record):
        self.calls.append(("log", record["step"]))

    def on_video(self, trainer, tag, video):
        self.calls.append(("video", trainer.step, tag, video.dim(), video.shape[1:]))

    def on_checkpoint(self, trainer, path):
        self.calls.append(("checkpoint", path.name))

    def on_fit_end(self, trainer, metrics):
        self.calls.append(("fit_end", trainer.step, bool(metrics)))


def tiny_trainer(out, objective="flowception", **kwargs):
    dataset = data.ToyColoring(num_videos=16, seed=0)
    torch.manual_seed(0)
    model = FlowceptionDiT(FlowceptionConfig.from_preset("tiny", in_channels=3, frame_size=(3, 3), patch_size=3,
                                                          rate_head=objective == "flowception",
                                                          attention="causal" if objective == "autoregressive"
                                                          else "bidirectional"))
    config = TrainConfig(steps=4, frames_per_batch=64, warmup_steps=1, log_every=2, checkpoint_every=2,
                         preview_every=2, objective=objective, out_dir=str(out), progress=False)
    return Trainer(model, dataset, config, **kwargs)


@pytest.mark.parametrize("objective", ["flowception", "full_sequence", "autoregressive"])
def test_callbacks_see_every_hook_and_previews(tmp_path, objective):
    recorder = Recorder()
    trainer = tiny_trainer(tmp_path, objective, callbacks=[recorder])
    rng = torch.get_rng_state()
    trainer.fit()
    assert torch.equal(torch.get_rng_state(), rng)  # previews leave the global RNG alone
    kinds = [c[0] for c in recorder.calls]
    assert kinds == ["fit_start", "step_end", "step_end", "log", "video", "checkpoint",
                     "step_end", "step_end", "log", "video", "checkpoint", "fit_end"]
    assert recorder.calls[1][2] == ["frames", "grad_norm", "insertion", "loss", "lr", "velocity"]
    video = next(c for c in recorder.calls if c[0] == "video")
    assert video[2:] == ("preview", 4, (3, 3, 3))
    assert len(list((tmp_path / "previews").glob("preview_step_*"))) == 2  # the default jsonl logger's copies
    assert [r["step"] for r in records(tmp_path)] == [2, 4]


def test_a_callback_can_stop_the_run_with_a_checkpoint(tmp_path):
    class StopAtThree(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 3:
                trainer.stop()

    trainer = tiny_trainer(tmp_path, callbacks=[StopAtThree()])
    trainer.fit()
    assert trainer.step == 3 and latest_checkpoint(tmp_path).name == "step_00000003"
    assert [r["step"] for r in records(tmp_path)] == [2, 3]  # the last step is logged too


def test_loggers_argument_and_bad_callbacks(tmp_path):
    trainer = tiny_trainer(tmp_path, loggers=())
    trainer.fit(until=2)
    assert not (tmp_path / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="unknown"):
        tiny_trainer(tmp_path, loggers=["csv"])
    with pytest.raises(TypeError, match="Callback instances"):
        tiny_trainer(tmp_path, callbacks=[print])


def test_jsonl_logger_drops_records_past_the_checkpoint_a_resume_continues(tmp_path):
    trainer = tiny_trainer(tmp_path / "run")
    trainer.fit()
    assert [r["step"] for r in records(tmp_path / "run")] == [2, 4]
    # the newest checkpoint is damaged: the resume continues from step 2 and step 4 is logged once
    (tmp_path / "run" / "checkpoints" / "step_00000004" / "model.safetensors").write_bytes(b"\x00" * 8)
    resumed = tiny_trainer(tmp_path / "run")
    with pytest.warns(UserWarning, match="skipped damaged"):
        assert resumed.resume() == 2
    resumed.fit()
    assert [r["step"] for r in records(tmp_path / "run")] == [2, 4]


def test_wandb_logger_with_a_stand_in_module(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, values, step):
            calls.append(("log", step, sorted(values)))

        def finish(self):
            calls.append(("finish",))

    stub = types.SimpleNamespace(init=lambda **kw: calls.append(("init", sorted(kw), kw.get("mode"))) or Run(),
                                 Video=lambda path, format: ("video", path))
    monkeypatch.setitem(sys.modules, "wandb", stub)
    trainer = tiny_trainer(tmp_path, loggers=[WandbLogger(config={"a": 1})])
    trainer.fit()
    assert calls[0] == ("init", ["config", "dir", "id", "project", "resume"], None)  # the mode: WANDB_MODE's
    logged = [c for c in calls if c[0] == "log"]
    assert ("log", 2, ["frames", "frames_per_s", "grad_norm", "insertion", "loss", "lr", "velocity"]) in logged
    assert ("log", 2, ["preview"]) in logged and calls[-1] == ("finish",)
    assert isinstance(JsonlLogger(), Callback)
