"""The `flowception` command: train, sample (videos + figure + summary), info, --help."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from flowception_ext.cli import _default_patch, build_parser, main
from flowception_ext.io import load_video


def error_of(argv, capsys, code=2) -> str:
    """The one line a user mistake prints (argparse's own errors exit through SystemExit)."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status == code, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("flowception: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"flowception {argv[0]}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--dataset", "toy-coloring:rotation", "--num-videos", "16", "--steps", "2",
                 "--frames-per-batch", "64", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("task", ["unconditional", "image_to_video", "interpolation", "extension"])
def test_sample_writes_readable_videos_figure_and_summary(tiny_run, tmp_path, task):
    out = tmp_path / task
    assert main(["sample", "--checkpoint", str(tiny_run), "--task", task, "--num-videos", "2", "--sampling-steps", "4",
                 "--max-frames", "40", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["videos"]) == 2
    for path, n in zip(summary["videos"], summary["lengths"]):
        assert load_video(path).shape[:2] == (n, 3)
        assert load_video(path).shape[2:] == (3, 3)  # the frames' own size unless --scale is given
    assert (out / "insertion_order.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_with_context_file(tiny_run, tmp_path):
    np.save(tmp_path / "ctx.npy", np.zeros((1, 3, 3, 3), np.float32))
    assert main(["sample", "--checkpoint", str(tiny_run), "--task", "image_to_video", "--context",
                 str(tmp_path / "ctx.npy"), "--num-videos", "1", "--sampling-steps", "3", "--scale", "4",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    first = load_video(json.loads((tmp_path / "s" / "summary.json").read_text())["videos"][0])[0]
    assert float(first.abs().max()) < 0.02  # the given (grey) image comes back first
    assert first.shape == (3, 12, 12)  # --scale 4


def test_old_task_names_and_steps_still_work_with_a_warning(tiny_run, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tiny_run), "--task", "i2v", "--num-videos", "1", "--steps", "3",
                 "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "'i2v' is deprecated; use 'image_to_video'" in err and "--steps is deprecated" in err
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["task"] == "image_to_video"


def test_help_documents_every_option(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"flowception {name} {action.option_strings[0]} has no help"
            shown = sub._get_formatter()._get_help_string(action)
            assert shown.count("(default:") <= 1, f"flowception {name} {action.option_strings[0]}: {shown}"
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--checkpoint" in capsys.readouterr().out


def test_info_and_bad_input(capsys, tmp_path):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "cpu_kernels" in info
    assert info["backends"]["cpu"] == ("kernels" if info["cpu_kernels"] else "stock")
    assert "unknown task 'sideways'" in error_of(
        ["sample", "--checkpoint", str(tmp_path), "--task", "sideways", "--out", str(tmp_path)], capsys)
    assert "no model" in error_of(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert "unknown dataset 'imagenet'" in error_of(["train", "--dataset", "imagenet", "--out", str(tmp_path)], capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the default --device is cuda where a GPU is visible")
def test_train_device_cpu_gives_the_default_checkpoint(tiny_run, tmp_path):
    # tiny_run trained with the default --device (the CPU here): same flags plus --device cpu.
    assert main(["train", "--dataset", "toy-coloring:rotation", "--num-videos", "16", "--steps", "2",
                 "--frames-per-batch", "64", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]) == 0
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        ours = (tmp_path / "checkpoints" / "step_00000002" / name).read_bytes()
        assert ours == (tiny_run / "checkpoints" / "step_00000002" / name).read_bytes(), name


@pytest.mark.parametrize("command", ["train", "sample"])
@pytest.mark.parametrize("device,message", [("banana", "is not a torch device"), ("cuda:99", "cuda:99")])
def test_bad_device_is_a_one_line_usage_error(command, device, message, tmp_path, capsys):
    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    required = ["--dataset", "toy-coloring"] if command == "train" else ["--checkpoint", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main([command, *required, "--out", str(tmp_path / "o"), "--device", device])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"flowception {command}: error: argument --device:") and message in error


def test_device_defaults_to_cuda_when_available():
    for command in ("train", "sample"):
        sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        default = next(a for a in sub._actions if a.dest == "device").default
        assert default == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.cuda
def test_sample_on_cuda_and_cpu_from_the_same_run(tiny_run, tmp_path):
    for device in ("cuda", "cpu"):
        assert main(["sample", "--checkpoint", str(tiny_run), "--num-videos", "2", "--steps", "4", "--max-frames", "20",
                     "--out", str(tmp_path / device), "--no-progress", "--device", device]) == 0
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("cuda", "cpu")]
    assert len(summaries[0]["videos"]) == len(summaries[1]["videos"]) == 2


def test_video_folder_options_and_their_errors(tmp_path, capsys):
    class Folder:  # what _default_patch reads of a VideoFolder
        options: dict = {}
        frame_shape = (3, 64, 64)

    assert _default_patch(Folder()) == 8
    Folder.frame_shape = (3, 144, 176)
    assert _default_patch(Folder()) == 16
    assert _default_patch(object()) == 2  # tensor files (latents)
    assert "apply to folder:PATH of video files only" in error_of(
        ["train", "--dataset", "toy-coloring", "--frame-size", "8", "--out", str(tmp_path)], capsys)
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", np.zeros((2, 3, 4, 4), np.float32))
    (tmp_path / "mixed" / "sub").mkdir()
    (tmp_path / "mixed" / "sub" / "b.gif").write_bytes(b"GIF89a")
    assert "holds both tensor files" in error_of(
        ["train", "--dataset", f"folder:{tmp_path / 'mixed'}", "--out", str(tmp_path / "o")], capsys)
    (tmp_path / "mixed" / "sub" / "b.gif").unlink()
    assert "apply to video files, not to tensor files" in error_of(
        ["train", "--dataset", f"folder:{tmp_path / 'mixed'}", "--max-frames", "4", "--out", str(tmp_path / "o")], capsys)
    pytest.importorskip("imageio.v3")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_text("not a movie")
    assert "x.mp4: unreadable video file" in error_of(
        ["train", "--dataset", f"folder:{tmp_path / 'bad'}", "--out", str(tmp_path / "o")], capsys)
    for bad in ("0", "8x", "axb"):
        assert "--frame-size: expected a size S or HxW" in error_of(
            ["train", "--dataset", "toy-coloring", "--frame-size", bad, "--out", str(tmp_path)], capsys)


def _write_npy_videos(folder, videos):
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(videos):
        np.save(folder / f"v{i:02d}.npy", v.numpy())


def test_eval_psnr_ssim_from_folders_and_a_checkpoint(tiny_run, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    reference = [torch.rand(6, 3, 12, 12, generator=g) * 2 - 1 for _ in range(3)]
    generated = [(v + 0.1 * torch.randn(v.shape, generator=g)).clamp(-1, 1) for v in reference]
    _write_npy_videos(tmp_path / "ref", reference)
    _write_npy_videos(tmp_path / "gen", generated)
    assert main(["eval", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                 "--metrics", "psnr,ssim", "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result) == {"psnr", "ssim", "settings"} and len(result["psnr"]["per_video"]) == 3
    assert 15 < result["psnr"]["mean"] < 30 and 0 < result["ssim"]["mean"] < 1
    # samples of a checkpoint (toy-coloring frames are 3×3: PSNR pairs them with 3×3 references)
    _write_npy_videos(tmp_path / "toy", [torch.rand(5, 3, 3, 3, generator=g) * 2 - 1 for _ in range(2)])
    assert main(["eval", "--checkpoint", str(tiny_run), "--reference", str(tmp_path / "toy"), "--metrics", "psnr",
                 "--sampling-steps", "4", "--max-frames", "20", "--out", str(tmp_path / "ck.json"), "--no-progress"]) == 0
    assert len(json.loads((tmp_path / "ck.json").read_text())["psnr"]["per_video"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--metrics", "fvd,lpips"], "--metrics: expected a comma-separated subset of fvd,psnr,ssim"),
    (["--i3d-frames", "4"], "--i3d-frames: expected a value >= 9"),
    (["--reference", "MISSING"], "--reference: MISSING is not a directory"),
])
def test_eval_bad_input_is_one_line(tmp_path, argv, message, capsys):
    _write_npy_videos(tmp_path / "v", [torch.zeros(3, 3, 12, 12)] * 2)
    base = {"--generated": str(tmp_path / "v"), "--reference": str(tmp_path / "v"), "--metrics": "psnr",
            "--out": str(tmp_path / "e.json")}
    base.update(dict(zip(argv[::2], argv[1::2])))
    assert message in error_of(["eval", *[x for kv in base.items() for x in kv]], capsys)


def test_eval_fvd_without_weights_names_the_fetch_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWCEPTION_CACHE", str(tmp_path / "empty"))
    _write_npy_videos(tmp_path / "v", [torch.zeros(9, 3, 12, 12)] * 2)
    assert "flowception fetch i3d" in error_of(
        ["eval", "--generated", str(tmp_path / "v"), "--reference", str(tmp_path / "v"), "--out",
         str(tmp_path / "e.json"), "--no-progress"], capsys)


@pytest.mark.parametrize("objective", ["full_sequence", "autoregressive"])
def test_sample_a_baseline_checkpoint_with_its_own_sampler(tmp_path, objective):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "toy-coloring", "--num-videos", "16", "--steps", "1", "--frames-per-batch", "64",
                 "--objective", objective, "--out", str(run), "--no-progress"]) == 0
    for task in ("unconditional", "image_to_video"):
        out = tmp_path / task
        assert main(["sample", "--checkpoint", str(run), "--task", task, "--num-frames", "6", "--num-videos", "2",
                     "--sampling-steps", "2", "--out", str(out), "--no-progress"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["objective"] == objective and summary["lengths"] == [6, 6]
        assert "insertion_order_figure" not in summary  # nothing is inserted
