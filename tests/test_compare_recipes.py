"""Issue #12 point 4: the comparison command runs recipes at equal image-steps, the Keras-layer anchor
among them, on a tiny source, and prints its table. Issue #21 points 2 and 3: it reuses a store, a run folder
or a results file's run only when everything that made it is the same, and runs and counts each recipe once."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_image_folder
from PIL import Image

sys.path.insert(0, str(REPO / "bench"))
import compare_recipes  # noqa: E402

COMPARE = [sys.executable, str(REPO / "bench" / "compare_recipes.py")]


def compare(*args: str) -> subprocess.CompletedProcess:
    """The comparison as a user runs it: the script in a process of its own (the tests of its refusals)."""
    return subprocess.run([*COMPARE, *args], capture_output=True, text=True)


def compare_here(*args: str) -> subprocess.CompletedProcess:
    """The comparison's main() in this process, with what it prints and how it exits, and its build-aug and train
    forked from this test process's CLI server (conftest.run_cli), which has imported TensorFlow once: the tests
    that build and train. The script's own process start is tested by compare() above."""
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    launch = compare_recipes.launch
    compare_recipes.launch = lambda command: run_cli(*command)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            compare_recipes.main(list(args))
    except SystemExit as exc:  # sys.exit(message) prints the message and exits 1, as in a process of its own
        if isinstance(exc.code, str):
            stderr.write(exc.code + "\n")
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        compare_recipes.launch = launch
    return subprocess.CompletedProcess([*COMPARE, *args], code, stdout.getvalue(), stderr.getvalue())


def test_compare_recipes_prints_a_row_per_recipe_with_mean_and_spread(tmp_path):
    images = write_image_folder(tmp_path / "images", {"ant": 8, "bee": 8, "cow": 8}, size=16)
    result = compare_here(
        "--source",
        str(images),
        "--work",
        str(tmp_path / "work"),
        "--recipes",
        "originals,crop-flip-x5+online,keras-crop-flip",
        "--image-steps",
        "200",
        "--seeds",
        "0,1",
        "--model",
        "shallow",
        "--batch-size",
        "16",
        "--json",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "copies.png"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| recipe", "| ---"))
    ]
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


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished comparison (originals, seed 0, 4 epochs of the 10 training images) in --work and --json, with the
    arguments that made it: the tests below rerun it with one setting changed and must not alter it."""
    root = tmp_path_factory.mktemp("finished")
    images = write_image_folder(root / "images", {"ant": 6, "bee": 6}, size=16)
    args = {
        "--source": str(images),
        "--work": str(root / "work"),
        "--json": str(root / "r.json"),
        "--recipes": "originals",
        "--seeds": "0",
        "--image-steps": "40",
        "--model": "shallow",
        "--batch-size": "8",
    }
    result = compare_here(*(part for pair in args.items() for part in pair))
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / "work" / "runs" / "originals-seed0"
    return {
        "args": args,
        "stdout": result.stdout,
        "root": root,
        "images": images,
        "run_dir": run_dir,
        "run_json": (run_dir / "run.json").read_bytes(),
        "results": (root / "r.json").read_bytes(),
    }


def rerun(finished, **changed: str) -> subprocess.CompletedProcess:
    """The finished comparison again, with the given arguments changed (None: left out)."""
    args = {**finished["args"], **{"--" + key.replace("_", "-"): value for key, value in changed.items()}}
    return compare_here(*(part for key, value in args.items() if value is not None for part in (key, value)))


def assert_untouched(finished) -> None:
    assert (finished["run_dir"] / "run.json").read_bytes() == finished["run_json"]
    assert (finished["root"] / "r.json").read_bytes() == finished["results"]


def test_a_run_folder_is_reused_only_under_the_settings_that_made_it(finished):
    again = rerun(finished, json=None)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == finished["stdout"]  # the same row, from the same run: nothing trained
    # issue #21 point 2: 400 image-steps reused the 40-step run and reported 400; another model or batch size reused it too
    for changed, named in (
        ({"image_steps": "400"}, "--epochs 4 -> 40 (from --image-steps 400)"),
        ({"batch_size": "4"}, "--batch-size 8 -> 4"),
        ({"model": "deep"}, "--model shallow -> deep"),
    ):
        result = rerun(finished, json=None, **changed)
        assert result.returncode != 0 and "| originals |" not in result.stdout, changed
        assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
        assert (
            f"{finished['run_dir']} holds a run made under other settings" in result.stderr
            and "give another --work" in result.stderr
        )
    assert_untouched(finished)


def test_a_store_in_work_built_from_other_data_is_refused_in_one_line(finished):
    other = write_image_folder(finished["root"] / "other", {"ant": 6, "bee": 6}, size=16, seed=1)
    for changed, named in (({"limit": "6"}, "limit null -> 6"), ({"source": str(other)}, "other source images")):
        result = rerun(finished, json=None, **changed)
        assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
        store = Path(finished["args"]["--work"]) / "originals.zarr"
        assert named in result.stderr and f"{store}" in result.stderr and "give another --work" in result.stderr, (
            result.stderr
        )
        assert (
            "--overwrite" not in result.stderr and "['" not in result.stderr
        )  # build-aug's advice is not this command's
    assert_untouched(finished)


def test_a_results_file_is_reused_only_for_runs_made_under_the_same_settings(finished, tmp_path):
    again = rerun(finished, work=str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        not (tmp_path / "b" / "runs").exists() and again.stdout == finished["stdout"]
    )  # nothing trained: the saved run was reused
    # other settings: refused, and the file keeps its runs (it was overwritten with the new runs before)
    other = rerun(finished, work=str(tmp_path / "c"), image_steps="80")
    assert other.returncode != 0 and other.stderr.count("\n") == 1, other.stderr
    assert "--image-steps 40 -> 80" in other.stderr and "give another --json" in other.stderr
    assert not (tmp_path / "c" / "runs").exists()
    # the same path with other images in it: the saved run was reused before, as only the path was compared
    image = next((finished["images"] / "ant").iterdir())
    original = image.read_bytes()
    try:
        write_image_folder(tmp_path / "changed", {"ant": 1}, size=16, seed=5)
        image.write_bytes(next((tmp_path / "changed" / "ant").iterdir()).read_bytes())
        changed = rerun(finished, work=str(tmp_path / "d"))
    finally:
        image.write_bytes(original)
    assert changed.returncode != 0 and changed.stderr.count("\n") == 1, changed.stderr
    assert "holds a run of originals seed 0 made under other settings (the source images" in changed.stderr, (
        changed.stderr
    )
    assert not (tmp_path / "d" / "runs").exists()
    # a results file that does not record what made its runs (written before it did) cannot vouch for them
    legacy = json.loads(finished["results"])
    for run in legacy["runs"]:
        del run["settings"]
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    unknown = rerun(finished, work=str(tmp_path / "e"), json=str(tmp_path / "legacy.json"))
    assert (
        unknown.returncode != 0 and "does not record the settings of its run of originals seed 0" in unknown.stderr
    ), unknown.stderr
    assert_untouched(finished)


def test_a_finished_run_moved_with_its_work_folder_is_reused_without_its_wall_time(finished, tmp_path):
    """A run folder is judged by what made it, not by the path of its store; one cut short before its wall time was
    written (compare.json) reports '-' for it (it stopped the comparison with a traceback before)."""
    shutil.copytree(finished["args"]["--work"], tmp_path / "moved")
    (tmp_path / "moved" / "runs" / "originals-seed0" / "compare.json").unlink()
    moved = rerun(finished, work=str(tmp_path / "moved"), json=None)
    assert moved.returncode == 0, moved.stderr[-3000:]
    row = next(line for line in moved.stdout.splitlines() if line.startswith("| originals |"))
    assert (
        row.split(" | ")[7] == "-"
        and row.split(" | ")[2] == finished["stdout"].split("| originals | ")[1].split(" | ")[1]
    )


@pytest.mark.parametrize(
    "recipes, seeds, refusal",
    [
        (
            "crop-flip-x2+mixup+cutmix",
            "0",
            "--recipes crop-flip-x2+mixup+cutmix: +mixup and +cutmix both set train --mix: keep one",
        ),
        (
            "crop-flip-x1+cutmix+cutmix",
            "0",
            "--recipes crop-flip-x1+cutmix+cutmix: +cutmix is given twice: give it once",
        ),
        (
            "originals+online+flip-shift",
            "0",
            "--recipes originals+online+flip-shift: +online and +flip-shift both set train --online: keep one",
        ),
        ("originals,originals", "0", "--recipes: originals is given twice: give it once"),
        (
            "originals,crop-flip-x0",
            "0",
            "--recipes: originals and crop-flip-x0 are the same recipe (originals): give it once",
        ),
        (
            "crop-flip-x5+cutmix+online,crop-flip-x5+online+cutmix",
            "0",
            "--recipes: crop-flip-x5+cutmix+online and crop-flip-x5+online+cutmix are the same recipe (crop-flip-x5+online+cutmix): give it once",
        ),
        ("originals", "0,1,0", "--seeds 0,1,0: seed 0 is given twice: give it once"),
        ("originals", "0,a", "--seeds 0,a: give whole numbers separated by commas"),
    ],
)
def test_a_recipe_or_seed_that_would_run_or_count_twice_is_refused_in_one_line(tmp_path, recipes, seeds, refusal):
    """Issue #21 point 3: two mixes ran as the last one under the name of both; a recipe given twice (or under another
    name) trained once and was counted twice ("runs 2 ± 0.0000")."""
    result = compare(
        "--source",
        str(tmp_path / "none"),
        "--work",
        str(tmp_path / "work"),
        "--recipes",
        recipes,
        "--seeds",
        seeds,
        "--image-steps",
        "10",
        "--model",
        "shallow",
        "--batch-size",
        "8",
    )
    assert result.returncode != 0 and result.stderr == f"compare_recipes: {refusal}\n"
    assert not (tmp_path / "work").exists()


def test_recipe_names_say_what_they_run():
    parse_recipe = compare_recipes.parse_recipe

    recipe = parse_recipe("randaugment-x20+online+cutmix")
    assert (recipe.copies, recipe.policy, recipe.train) == (
        20,
        "randaugment",
        ("--online", "flip,shift,erase", "--mix", "cutmix"),
    )
    assert parse_recipe("originals+online").copies == 0
    assert parse_recipe("crop-flip-x5+flip-shift").train == ("--online", "flip,shift")
    assert parse_recipe("keras-randaugment").train == ("--keras-augment", "randaugment")
    # one recipe, one name: the one its runs are filed and shown under
    assert parse_recipe("randaugment-x0") == parse_recipe("crop-flip-x0") == parse_recipe("originals")
    assert (
        parse_recipe("randaugment-x0").name == "originals" and parse_recipe("keras-crop-flip").name == "keras-crop-flip"
    )
    assert parse_recipe("crop-flip-x05+cutmix+online").name == "crop-flip-x5+online+cutmix"
    for bad in ("crop-flip-x", "sepia-x5", "crop-flip-x5+sharpen", "keras-sepia", "keras-crop-flip+online"):
        with pytest.raises(ValueError, match=re.escape(bad)):
            parse_recipe(bad)
