"""Issue #12 point 4: the comparison command runs recipes at equal image-steps, the Keras-layer anchor
among them, on a tiny source, and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, write_image_folder


def test_compare_recipes_prints_a_row_per_recipe_with_mean_and_spread(tmp_path):
    images = write_image_folder(tmp_path / "images", {"ant": 8, "bee": 8, "cow": 8}, size=16)
    result = subprocess.run([sys.executable, str(REPO / "bench" / "compare_recipes.py"), "--source", str(images), "--work",
                             str(tmp_path / "work"), "--recipes", "originals,crop-flip-x5+online,keras-crop-flip", "--image-steps",
                             "200", "--seeds", "0,1", "--model", "shallow", "--batch-size", "16", "--json", str(tmp_path / "r.json")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith(("| recipe", "| ---"))]
    assert [row.split(" | ")[0][2:] for row in rows] == ["originals", "crop-flip-x5+online", "keras-crop-flip"]
    runs = json.loads((tmp_path / "r.json").read_text())
    assert len(runs) == 6 and {r["seed"] for r in runs} == {0, 1}
    by_recipe = {r["recipe"]: r for r in runs}
    # equal image-steps: whole epochs closest to 200 images (19 originals -> 11 epochs; 114 copies -> 2 epochs)
    assert by_recipe["originals"]["image_steps"] == by_recipe["keras-crop-flip"]["image_steps"] == 19 * 11
    assert by_recipe["crop-flip-x5+online"]["image_steps"] == 19 * 6 * 2
    assert all(0 <= r["final_val_accuracy"] <= r["best_val_accuracy"] <= 1 for r in runs)
    assert " ± " in rows[0]  # two seeds: mean ± spread
    run = json.loads((tmp_path / "work" / "runs" / "crop-flip-x5+online-seed1" / "run.json").read_text())
    assert run["options"]["online"] == "flip,shift,erase" and run["options"]["seed"] == 1
