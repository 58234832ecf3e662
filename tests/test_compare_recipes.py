"""Issue #12 point 4: the comparison command runs recipes at equal image-steps, the Keras-layer anchor
among them, on a tiny source, and prints its table."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO, write_image_folder


def test_compare_recipes_prints_a_row_per_recipe_with_mean_and_spread(tmp_path):
    images = write_image_folder(tmp_path / "images", {"ant": 8, "bee": 8, "cow": 8}, size=16)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare_recipes.py"), "--source", str(images), "--work",
                             str(tmp_path / "work"), "--recipes", "originals,crop-flip-x5+online,keras-crop-flip", "--image-steps",
                             "200", "--seeds", "0,1", "--model", "shallow", "--batch-size", "16", "--json", str(tmp_path / "r.json"),
                             "--plot", str(tmp_path / "copies.png")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| recipe", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows] == ["originals", "crop-flip-x5+online", "keras-crop-flip"]
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert len(runs) == 6 and {r["seed"] for r in runs} == {0, 1}
    by_recipe = {r["recipe"]: r for r in runs}
    # equal image-steps: whole epochs closest to 200 images (19 originals -> 11 epochs; 114 copies -> 2 epochs)
    assert by_recipe["originals"]["image_steps"] == by_recipe["keras-crop-flip"]["image_steps"] == 19 * 11
    assert by_recipe["crop-flip-x5+online"]["image_steps"] == 19 * 6 * 2
    assert all(0 <= r["final_val_accuracy"] <= r["best_val_accuracy"] <= 1 for r in runs)
    assert all(r["train_images_per_second"] > 0 for r in runs)
    assert " ± " in rows[0]  # two seeds: mean ± spread
    run = json.loads((tmp_path / "work" / "runs" / "crop-flip-x5+online-seed1" / "run.json").read_text())
    assert run["options"]["online"] == "flip,shift,erase" and run["options"]["seed"] == 1
    with Image.open(tmp_path / "copies.png") as plot:
        assert plot.format == "PNG" and plot.width > 300


def test_a_rerun_reuses_the_finished_runs_of_its_results_file_and_only_under_the_same_settings(tmp_path):
    images = write_image_folder(tmp_path / "images", {"ant": 6, "bee": 6}, size=16)
    base = [sys.executable, str(REPO / "bench" / "compare_recipes.py"), "--source", str(images), "--recipes", "crop-flip-x1",
            "--seeds", "0", "--model", "shallow", "--batch-size", "8", "--json", str(tmp_path / "r.json")]
    first = subprocess.run(base + ["--work", str(tmp_path / "a"), "--image-steps", "40"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(base + ["--work", str(tmp_path / "b"), "--image-steps", "40"], capture_output=True, text=True)
    assert again.returncode == 0 and not (tmp_path / "b" / "runs").exists()  # nothing trained: the saved run was reused
    assert again.stdout == first.stdout
    other = subprocess.run(base + ["--work", str(tmp_path / "c"), "--image-steps", "80"], capture_output=True, text=True)
    assert other.returncode == 0 and "not reused" in other.stderr and (tmp_path / "c" / "runs" / "crop-flip-x1-seed0").is_dir()


def test_recipe_names_say_what_they_run():
    sys.path.insert(0, str(REPO / "bench"))
    from compare_recipes import parse_recipe

    recipe = parse_recipe("randaugment-x20+online+cutmix")
    assert (recipe.copies, recipe.policy, recipe.train) == (20, "randaugment", ("--online", "flip,shift,erase", "--mix", "cutmix"))
    assert parse_recipe("originals+online").copies == 0
    assert parse_recipe("crop-flip-x5+flip-shift").train == ("--online", "flip,shift")
    assert parse_recipe("keras-randaugment").train == ("--keras-augment", "randaugment")
    for bad in ("crop-flip-x", "sepia-x5", "crop-flip-x5+sharpen", "keras-sepia", "keras-crop-flip+online"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            parse_recipe(bad)
