"""The example scripts still run: each with ``--quick`` (under 3 minutes on one thread), checking
that its outputs exist and parse. Slow: deselect with ``-m 'not slow'``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# The demo has no --quick: a few steps of everything instead.
DEMO_QUICK = ["--train-steps", "30", "--num-videos", "4", "--sample-steps", "10"]

# script and options -> (JSON file it writes, keys it must hold, figures it must write)
CASES = {
    "demo.py": ("summary.json", ("fraction_lengths_15_20_25_30", "fraction_on_manifold"),
                ("lengths.png", "samples.gif", "insertion_order.png")),
    "insertion_orders.py": ("results.json", ("metrics", "paired_vs_learned"),
                            ("insertion_orders_metrics.png", "insertion_orders_examples.png")),
    "paradigms.py": ("results.json", ("metrics", "error_curves", "sampling", "train_flops_per_step", "context_probe_t03",
                                      "step_sweep"), ("paradigms_consistency.png", "paradigms_step_sweep.png")),
    "interpolation.py": ("results.json", ("gap_metrics", "quality"),
                         ("interpolation_examples.png", "interpolation_gaps.png")),
    "length_modeling.py": ("summary.json",
                           ("total_variation_distance", "fraction_on_manifold", "offset_accuracy_probe"), ("lengths.png",)),
    "length_modeling.py --objective full_sequence": ("summary.json",
                                                     ("lengths", "fraction_breaking_each_rule", "offset_accuracy_probe"), ()),
    "recipe_study.py": ("study_toy.json", ("settings", "variants"), ()),
    "recipe_study.py --dataset shapes": ("study_shapes.json", ("settings", "variants"), ()),
    # early insertion: the sampler must get the κ and the insertion draw of the recipe
    "recipe_study.py --variants early5_clean_loss": ("study_toy.json", ("settings", "variants"), ()),
    "recipe_study.py --dataset shapes --variants context_zero_clean_early5": ("study_shapes.json",
                                                                             ("settings", "variants"), ()),
    "toy_denoiser.py": ("rope20_wide_uniform.json", ("bayes", "network", "history"), ()),
    "real_clips.py": ("results.json", ("metrics", "clips", "train_flops_per_step"),
                      ("real_clips_lengths.png", "real_clips_examples.png")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_example_quick(case: str, tmp_path: Path) -> None:
    script, *options = case.split()
    if script == "real_clips.py":
        from flowception_ext.eval.i3d import i3d_weights_path

        if not i3d_weights_path().is_file():
            pytest.skip("FVD needs the I3D weights (flowception fetch i3d; CI fetches them)")
    out = tmp_path / "out"
    # The environment is inherited: the package under test is the one this pytest imports (the
    # installed build in CI, the source tree with PYTHONPATH in development).
    quick = DEMO_QUICK if script == "demo.py" else ["--quick", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(EXAMPLES / script), *quick, *options, "--out", str(out)]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, keys, figures = CASES[case]
    data = json.loads((out / name).read_text())
    assert all(k in data for k in keys), sorted(data)
    for figure in figures:
        assert (out / figure).stat().st_size > 0
    if "metrics" in data:  # every metric of every method has a value and a 95% interval
        for row in data["metrics"].values():
            for entry in row.values():
                assert len(entry["ci95"]) == 2 and "value" in entry


@pytest.mark.parametrize("dataset", ["toy", "shapes"])
def test_recipe_study_list(dataset: str) -> None:
    """``--list`` names every variant the dataset accepts (and nothing it rejects), then exits."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import recipe_study
    finally:
        sys.path.remove(str(EXAMPLES))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "recipe_study.py"), "--list", "--dataset", dataset],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    known = (list(recipe_study.SHAPES_VARIANTS) if dataset == "shapes" else
             [n for n in [*recipe_study.VARIANTS, *recipe_study.COMBINATIONS] if n not in recipe_study.SHAPES_ONLY])
    assert listed == known
    lines = dict(line.split(maxsplit=1) for line in proc.stdout.splitlines())
    assert lines["clean"] == "model.prediction='clean'" and lines["baseline"] == "(the baseline)"
