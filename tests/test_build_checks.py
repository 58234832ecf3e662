"""build-aug refuses at build time what train would refuse, recovers from a failed first build without
--overwrite, and checks --preview-dir before any work (issue #9, points 5-7)."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_store, run_cli, write_cifar_archive, write_image_folder
from PIL import Image
from test_build import start_build, wait_for_chunks
from test_robustness import run_without_root_powers

QUICK = ["--copies", "1", "--preview", "0", "--workers", "1"]


def one_line_error(result, *fragments: str) -> str:
    """The one-line refusal: non-zero exit, no traceback, every fragment in it."""
    lines = result.stderr.strip().splitlines()  # a progress bar may come before it
    assert result.returncode == 1 and lines and lines[-1].startswith("build-aug: error: "), result.stderr
    assert "Traceback" not in result.stderr and sum("error" in line for line in lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


# -- point 5: stores that train would refuse are refused at build time ----------------------------------


def test_a_source_of_one_class_is_refused_before_any_work(tmp_path):
    single = write_image_folder(tmp_path / "single", {"cat": 6}, size=8)
    out = tmp_path / "s.zarr"
    refused = run_cli("build-aug", "--source", str(single), "--out", str(out), *QUICK)
    one_line_error(
        refused, f"--source {single} has training images of 1 class (cat); a classifier needs at least 2 classes"
    )
    assert not out.exists()

    two = write_image_folder(tmp_path / "two", {"cat": 3, "dog": 3}, size=8)
    limited = run_cli("build-aug", "--source", str(two), "--limit", "1", "--out", str(out), *QUICK)
    one_line_error(limited, "with --limit 1 has training images of 1 class (cat)")
    assert not out.exists()


def test_skip_bad_that_leaves_one_class_is_refused(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"cat": 4, "dog": 3}, size=8)
    for file in (folder / "dog").iterdir():
        file.write_bytes(b"not an image")
    out = tmp_path / "s.zarr"
    refused = run_cli("build-aug", "--source", str(folder), "--out", str(out), "--skip-bad", *QUICK)
    one_line_error(refused, "after --skip-bad left out its bad images has training images of 1 class (cat)")
    inspected = run_cli("inspect-aug", "--store", str(out))
    assert inspected.returncode == 1 and "unfinished build" in inspected.stderr


def held_out(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    root = zarr.open_group(str(out), mode="r")
    train = root["train"]
    originals = train["copy_index"][:] == 0
    val_labels = root["val/labels"][:] if "val" in root else np.empty(0, int)
    return train["labels"][:][originals], val_labels, train["source_index"][:][originals]


def test_validation_keeps_the_fraction_overall_when_classes_are_tiny(tmp_path):
    # 300 classes of 2 images: rounding each class (0.2 x 2 = 0.4 -> 0) would hold out nothing
    folder = write_image_folder(tmp_path / "imgs", {f"c{i:03d}": 2 for i in range(300)}, size=4, fmt="png")
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug", "--source", str(folder), "--val-fraction", "0.2", "--out", str(out), *QUICK, "--quiet", check=True
    )
    train_labels, val_labels, _ = held_out(out)
    assert len(val_labels) == 120 and len(train_labels) == 480
    assert np.bincount(val_labels, minlength=300).max() == 1  # never a class's last training image
    assert len(np.unique(train_labels)) == 300
    again = tmp_path / "again.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--val-fraction",
        "0.2",
        "--out",
        str(again),
        *QUICK,
        "--quiet",
        check=True,
    )
    assert_same_store(out, again)  # the seeded tie-breaks are deterministic


def test_a_huge_val_fraction_leaves_every_class_a_training_image(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 10, "b": 10, "c": 10}, size=8)
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug", "--source", str(folder), "--val-fraction", "0.99", "--out", str(out), *QUICK, "--quiet", check=True
    )
    train_labels, val_labels, _ = held_out(out)
    assert sorted(train_labels.tolist()) == [0, 1, 2] and len(val_labels) == 27


def test_a_small_fraction_holds_out_at_least_one_image(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 5, "b": 5}, size=8)
    out = tmp_path / "s.zarr"
    run_cli(
        "build-aug", "--source", str(folder), "--val-fraction", "0.01", "--out", str(out), *QUICK, "--quiet", check=True
    )
    _, val_labels, _ = held_out(out)
    assert len(val_labels) == 1


def test_validation_asked_for_but_impossible_is_refused_when_there_is_no_test_split(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 1, "b": 1, "c": 1}, size=8)
    out = tmp_path / "s.zarr"
    refused = run_cli("build-aug", "--source", str(folder), "--val-fraction", "0.5", "--out", str(out), *QUICK)
    one_line_error(
        refused, "--val-fraction 0.5 holds out no image: every class of --source", "has a single training image"
    )
    assert not out.exists()


def test_val_fraction_0_warns_and_train_runs_without_validation_on_the_test_split(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=1, per_batch=20, n_test=10)
    out = tmp_path / "s.zarr"
    built = run_cli("build-aug", "--source", str(archive), "--val-fraction", "0", "--out", str(out), *QUICK, check=True)
    warnings = [line for line in built.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: --val-fraction 0: the store has no validation split; train will not validate during "
        "training and will judge the model on the test split"
    ]
    assert "val" not in zarr.open_group(str(out), mode="r")
    trained = run_cli(
        "train",
        "--store",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--model",
        "shallow",
        "--out",
        str(tmp_path / "run"),
        check=True,
    )
    assert "no validation during training" in trained.stdout and "Test accuracy" in trained.stdout
    assert "(test split, 10 images)" in trained.stdout


def test_val_fraction_0_without_a_test_split_warns_that_train_will_refuse_it(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=8)
    out = tmp_path / "s.zarr"
    built = run_cli(
        "build-aug", "--source", str(folder), "--val-fraction", "0", "--out", str(out), *QUICK, "--quiet", check=True
    )
    assert built.stderr.strip() == (
        "warning: --val-fraction 0: the store has no validation split and the source no test split, "
        "so train will refuse it (nothing to judge a model on); build with --val-fraction above 0 to train on it"
    )
    trained = run_cli("train", "--store", str(out), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert trained.returncode == 1 and "neither validation nor test rows" in trained.stderr


# -- point 6: a failed first build is easy to fix ----------------------------------------------------------


def test_mixed_sizes_then_image_size_restarts_without_overwrite(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=16)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "b" / "big.png")
    out = tmp_path / "s.zarr"
    failed = run_cli("build-aug", "--source", str(folder), "--out", str(out), *QUICK)
    one_line_error(failed, "images differ in size", "pass --image-size N")
    for reader in ("inspect-aug", "train"):
        read = run_cli(reader, "--store", str(out), *(["--out", str(tmp_path / "run")] if reader == "train" else []))
        assert read.returncode == 1 and "Traceback" not in read.stderr
        assert (
            f"store {out} is incomplete, an unfinished build (it stopped or is still running): rerun the same build-aug command"
            in read.stderr
        )
        assert "not an augzarr store" not in read.stderr

    fixed = run_cli("build-aug", "--source", str(folder), "--out", str(out), "--image-size", "12", *QUICK, check=True)
    assert (
        fixed.stdout.splitlines()[0]
        == f"restarting the unfinished build in {out} with these arguments: no chunk had been committed"
    )
    assert fixed.stdout.splitlines()[1].startswith(f"built {out}:")
    reference = tmp_path / "reference.zarr"
    run_cli("build-aug", "--source", str(folder), "--out", str(reference), "--image-size", "12", *QUICK, check=True)
    assert_same_store(out, reference)


def test_bad_image_names_skip_bad_and_skip_bad_then_just_works(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=16)
    victim = folder / "a" / "0000.jpg"  # the first file: the size probe must not stop on it either
    victim.write_bytes(b"GIF89a not really")
    out = tmp_path / "s.zarr"
    failed = run_cli("build-aug", "--source", str(folder), "--out", str(out), *QUICK)
    assert one_line_error(failed).endswith(
        f"cannot decode image {victim}: not a supported image or corrupt; "
        "remove it or replace it, or pass --skip-bad to leave it out"
    )
    skipped = run_cli("build-aug", "--source", str(folder), "--out", str(out), "--skip-bad", *QUICK, check=True)
    assert "restarting the unfinished build" in skipped.stdout and "no chunk had been committed" in skipped.stdout
    assert "or pass --skip-bad" not in skipped.stderr  # the skipped file's reason does not suggest what was done
    assert [entry["file"] for entry in zarr.open_group(str(out), mode="r").attrs["skipped"]] == [str(victim)]


def test_unreadable_image_names_skip_bad(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 4, "b": 4}, size=16)
    victim = folder / "b" / "0002.jpg"
    victim.chmod(0)
    failed = run_without_root_powers("build-aug", "--source", str(folder), "--out", str(tmp_path / "s.zarr"), *QUICK)
    assert one_line_error(failed).endswith(
        f"cannot read image {victim} (Permission denied): make it readable or remove it, "
        "or pass --skip-bad to leave it out"
    )


@pytest.fixture
def stopped_build(tmp_path):
    """A build killed after it committed some chunks: (its arguments, its store)."""
    folder = write_image_folder(tmp_path / "imgs", {"a": 100, "b": 100}, size=16)
    args = [
        "--source",
        str(folder),
        "--copies",
        "5",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--workers",
        "1",
        "--quiet",
    ]
    out = tmp_path / "s.zarr"
    process = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return args, out


def test_a_true_mismatch_names_only_the_real_differences(stopped_build):
    args, out = stopped_build
    resized = run_cli("build-aug", *args, "--image-size", "24", "--out", str(out))
    line = one_line_error(
        resized,
        f"{out} holds an unfinished build with other arguments (image_shape [16, 16, 3] -> [24, 24, 3]; "
        "policy.PadIfNeeded.min_height 20 -> 30;",
        "--overwrite",
    )
    assert '"crop-flip" -> "crop-flip"' not in line and "null" not in line and "limit" not in line
    skipping = run_cli("build-aug", *args, "--skip-bad", "--out", str(out))
    line = one_line_error(skipping, "unfinished build with other arguments (skip_bad false -> true)")
    assert "null" not in line and "policy" not in line
    limited = run_cli("build-aug", *args, "--limit", "150", "--out", str(out))
    one_line_error(limited, "(limit null -> 150)")
    policy = run_cli("build-aug", *args, "--policy", "notebook", "--out", str(out))
    one_line_error(policy, '(policy "crop-flip" -> "notebook")')
    run_cli("build-aug", *args, "--out", str(out), check=True)  # its own arguments still resume it


def test_an_unfinished_build_laid_out_by_another_plan_is_never_finished_with_this_one(stopped_build, tmp_path):
    """A build started by a version that held out other rows (the rounding changed) must not be finished
    with chunks of this version's plan: refused while chunks are committed; laid out again when none is."""
    args, out = stopped_build
    source_index = zarr.open_array(str(out), path="train/source_index", mode="r+")
    source_index[:2] = source_index[:2][::-1]  # as an older planner might have ordered them
    refused = run_cli("build-aug", *args, "--out", str(out))
    one_line_error(
        refused,
        f"the unfinished build in {out} laid out its rows otherwise (an older augzarr started it): pass --overwrite",
    )
    for marker in [p for p in (out / ".build" / "chunks").rglob("*") if p.is_file()]:
        marker.unlink()  # as if it had stopped before its first chunk
    run_cli("build-aug", *args, "--out", str(out), check=True)
    reference = tmp_path / "reference.zarr"
    run_cli("build-aug", *args, "--out", str(reference), check=True)
    assert_same_store(out, reference)


# -- point 7: checks before work, not after ----------------------------------------------------------------


def test_an_unwritable_preview_dir_is_refused_before_the_build(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=8)
    out = tmp_path / "s.zarr"
    args = [
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(out),
        "--copies",
        "1",
        "--preview",
        "2",
        "--workers",
        "1",
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    is_file = run_cli(*args, "--preview-dir", str(blocker))
    one_line_error(is_file, f"--preview-dir {blocker} is a file")
    under_file = run_cli(*args, "--preview-dir", str(blocker / "previews"))
    one_line_error(
        under_file, f"--preview-dir {blocker / 'previews'} cannot be written (Not a directory)", "--preview 0"
    )
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    refused = run_without_root_powers(*args, "--preview-dir", str(read_only / "previews"))
    one_line_error(refused, f"--preview-dir {read_only / 'previews'} cannot be written (Permission denied)")
    assert not out.exists()  # refused before the build started
    inspect = run_cli("inspect-aug", "--store", str(out), "--preview", "2", "--preview-dir", str(blocker / "previews"))
    assert inspect.returncode == 1 and f"--preview-dir {blocker / 'previews'} cannot be written" in inspect.stderr
    run_cli(*args, "--preview-dir", str(tmp_path / "new" / "previews"), check=True)
    assert len(list((tmp_path / "new" / "previews").glob("cifar_*.jpeg"))) == 2 * 2
    assert not list((tmp_path / "new" / "previews").glob(".augzarr-probe*"))  # the probe leaves nothing


def test_a_build_refused_after_the_preview_check_leaves_no_preview_folder(tmp_path):
    """The writability probe made --preview-dir (and its missing parents) and a refusal that came later, here the
    disk check, left them behind empty."""
    folder = write_image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, size=8)
    previews = tmp_path / "new" / "previews"
    refused = run_cli(
        "build-aug", "--source", str(folder), "--out", str(tmp_path / "s.zarr"), "--copies", "10000",
        "--image-size", "2048", "--preview-dir", str(previews),
    )  # fmt: skip
    one_line_error(refused, "free some space")
    assert not (tmp_path / "new").exists() and not (tmp_path / "s.zarr").exists()


def test_missing_previews_of_a_complete_store_are_written_on_the_next_run(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=8)
    previews = tmp_path / "previews"
    args = [
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "s.zarr"),
        "--copies",
        "1",
        "--preview",
        "2",
        "--preview-dir",
        str(previews),
        "--workers",
        "1",
    ]
    run_cli(*args, check=True)
    written = sorted(p.name for p in previews.iterdir())
    assert len(written) == 5  # 2 images x (original + copy) and the contact sheet
    (previews / written[0]).unlink()
    (previews / "contact_sheet.png").unlink()
    again = run_cli(*args, check=True)
    assert (
        again.stdout.strip()
        == f"{tmp_path / 's.zarr'} is already complete with these arguments; its previews were missing: wrote 5 in {previews}/"
    )
    assert sorted(p.name for p in previews.iterdir()) == written
    third = run_cli(*args, check=True)
    assert "nothing to do" in third.stdout


def test_a_claim_killed_before_it_made_the_chunks_folder_resumes(tmp_path):
    """The campaign once killed a build between writing .build/build.json and making .build/chunks/:
    the rerun must resume it (it stopped with 'No such file or directory'), to the same store."""
    folder = write_image_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    args = [
        "build-aug",
        "--source",
        str(folder),
        "--copies",
        "2",
        "--chunk-size",
        "4",
        "--preview",
        "0",
        "--workers",
        "1",
        "--quiet",
    ]
    reference = tmp_path / "reference.zarr"
    run_cli(*args, "--out", str(reference), check=True)
    out = tmp_path / "cut.zarr"
    (out / ".build").mkdir(parents=True)
    identity = zarr.open_group(str(reference), mode="r").attrs["identity"]
    (out / ".build" / "build.json").write_text(json.dumps({"identity": identity, "source_hash": None}))
    resumed = run_cli(*args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_store(out, reference)
