"""Image-folder layouts (issue 9, point 1) and EXIF-oriented sizes (point 8): every layout is either
read as what it is, recorded in the store, or refused in one line; never guessed wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import run_cli, smooth_image, write_image_folder
from PIL import Image

from augzarr.images import probe_size, read_image_file


def build(source: Path, out: Path, *extra: str):
    return run_cli(
        "build-aug",
        "--source",
        str(source),
        "--out",
        str(out),
        "--copies",
        "2",
        "--preview",
        "0",
        "--workers",
        "1",
        *extra,
    )


def pixels(files) -> list[bytes]:
    """The decoded images of files, as a sorted list: a split's content whatever its row order."""
    return sorted(read_image_file(Path(f))[0].tobytes() for f in files)


def images_below(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix in (".jpg", ".png")]


def split_layout(root: Path, val: str | None = "valid", test: bool = True) -> Path:
    write_image_folder(root / "train", {"a": 4, "b": 4})
    if test:
        write_image_folder(root / "test", {"a": 1, "b": 2}, seed=1)
    if val:
        write_image_folder(root / val, {"a": 2, "b": 1}, seed=2)
    return root


def test_train_valid_test_uses_valid_as_val_and_test_as_test(tmp_path):
    root = split_layout(tmp_path / "d")
    out = tmp_path / "s.zarr"
    result = build(root, out, "--val-fraction", "0.5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"built {out}: 24 train, 3 val, 3 test rows")
    assert result.stdout.strip().endswith("; source layout split (train, valid, test)")
    # the unused option is said, not silently dropped
    assert (
        "warning: --val-fraction 0.5 is not used: the source's own validation folder is the val split" in result.stderr
    )

    group = zarr.open_group(str(out), mode="r")
    attrs = group.attrs
    assert attrs["source"]["layout"] == "split (train, valid, test)"
    assert attrs["val_fraction"] is None and attrs["identity"]["val_fraction"] is None
    assert (attrs["source"]["train_count"], attrs["source"]["val_count"], attrs["source"]["test_count"]) == (8, 3, 3)
    train = group["train/images"][:]
    originals = train[group["train/copy_index"][:] == 0]
    # each split holds exactly its own folder's images: no test or valid image is trained on,
    # and nothing of train/ was carved out for validation
    assert sorted(image.tobytes() for image in originals) == pixels(images_below(root / "train"))
    assert sorted(image.tobytes() for image in group["val/images"][:]) == pixels(images_below(root / "valid"))
    assert sorted(image.tobytes() for image in group["test/images"][:]) == pixels(images_below(root / "test"))
    assert not set(map(bytes, train.reshape(len(train), -1))) & set(
        pixels(images_below(root / "test")) + pixels(images_below(root / "valid"))
    )
    assert np.bincount(group["val/labels"][:]).tolist() == [2, 1]
    assert np.bincount(group["test/labels"][:]).tolist() == [1, 2]

    shown = run_cli("inspect-aug", "--store", str(out), check=True).stdout
    assert "layout       split (train, valid, test)" in shown
    assert "val from the source's own folder" in shown
    as_json = json.loads(run_cli("inspect-aug", "--store", str(out), "--json", check=True).stdout)
    assert as_json["layout"] == as_json["source"]["layout"] == "split (train, valid, test)"

    again = build(root, out)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    # the content hash covers valid/'s files too
    Image.fromarray(smooth_image(np.random.default_rng(9), 16)).save(root / "valid" / "a" / "0000.jpg", quality=95)
    changed = build(root, out)
    assert changed.returncode == 1 and "was built from other source images" in changed.stderr.strip().splitlines()[-1]


def test_a_bad_image_in_valid_is_named_or_skipped(tmp_path):
    root = split_layout(tmp_path / "d", test=False)
    bad = root / "valid" / "b" / "0000.jpg"
    bad.write_bytes(b"not a jpeg")
    stopped = build(root, tmp_path / "s.zarr")
    assert stopped.returncode == 1 and str(bad) in stopped.stderr.strip().splitlines()[-1]
    skipped = build(root, tmp_path / "t.zarr", "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    group = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert group["val/labels"][:].tolist() == [0, 0]  # valid/b's only image left out, valid/a's two kept
    assert [entry["file"] for entry in group.attrs["skipped"]] == [str(bad)]


@pytest.mark.parametrize(
    "case, expected_layout, rows",
    [
        ("train-val", "split (train, val)", "24 train, 3 val rows"),
        ("train-test-empty-and-hidden", "split (train, test)", "18 train, 2 val, 3 test rows"),
        ("capitalised", "split (Train, Test)", "18 train, 2 val, 3 test rows"),
        ("flat-with-empty-test", "flat", "18 train, 2 val rows"),
    ],
)
def test_layouts_that_are_read_as_they_are(tmp_path, case, expected_layout, rows):
    root = tmp_path / "d"
    if case == "train-val":
        split_layout(root, val="val", test=False)
    elif case == "train-test-empty-and-hidden":
        split_layout(root, val=None)
        (root / "notes").mkdir()  # an empty folder beside the splits: not a class, not ambiguous
        (root / ".git" / "objects").mkdir(parents=True)
        (root / "README.txt").write_text("photos")
    elif case == "capitalised":
        write_image_folder(root / "Train", {"a": 4, "b": 4})
        write_image_folder(root / "Test", {"a": 1, "b": 2}, seed=1)
    else:
        write_image_folder(root, {"a": 4, "b": 4})
        (root / "test").mkdir()  # empty: a class folder without images, not a split
    out = tmp_path / "s.zarr"
    result = build(root, out)
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stdout.splitlines() if line.startswith(f"built {out}: "))
    assert f": {rows} (" in summary and summary.endswith(f"; source layout {expected_layout}"), summary
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["class_names"] == ["a", "b"]
    assert attrs["source"]["layout"] == expected_layout
    if case == "train-test-empty-and-hidden":
        ignored = "\n".join(attrs["source"]["ignored"])
        assert "notes: empty folder, not used" in ignored and ".git: hidden" in ignored
        assert "README.txt: not in a split folder" in ignored
        assert "not used: " in result.stderr
    if case == "flat-with-empty-test":
        assert any(
            note.endswith("test: empty class folder, not used as a class") for note in attrs["source"]["ignored"]
        )


AMBIGUOUS = {
    # case: (folders to write {path: {class: count}}, the refusal's expected text)
    "split-beside-a-class": (
        {"train": {"a": 2, "b": 2}, "test": {"a": 1}, "extra": {"a": 1}},
        "cannot tell its layout: split folders (test/, train/) beside other folders (extra/); "
        "for DIR/train/<class>/... move extra/ out of it, for DIR/<class>/... rename test/, train/, "
        "or point --source at the folder that holds only class folders",
    ),
    "a-class-named-test": (
        {"": {"cat": 2, "dog": 2, "test": 2}},
        "cannot tell its layout: split folders (test/) beside other folders (cat/, dog/)",
    ),
    "val-and-valid": (
        {"train": {"a": 2}, "val": {"a": 1}, "valid": {"a": 1}},
        "both val/ and valid/ hold val images; keep one of them",
    ),
    "test-without-train": ({"test": {"a": 2, "b": 1}}, "test/ without train/: the split layout needs"),
    "val-class-unknown-to-train": (
        {"train": {"a": 2}, "valid": {"a": 1, "z": 1}},
        "valid/ has classes that train/ lacks: z",
    ),
    "test-class-unknown-to-train": ({"train": {"a": 2}, "test": {"y": 1}}, "test/ has classes that train/ lacks: y"),
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_ambiguous_layouts_are_refused_in_one_line(tmp_path, case):
    folders, expected = AMBIGUOUS[case]
    root = tmp_path / "d"
    for sub, classes in folders.items():
        write_image_folder(root / sub, classes)
    out = tmp_path / "s.zarr"
    result = build(root, out)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"build-aug: error: --source {root}: ") and expected in line, line
    assert not out.exists()


def test_images_loose_in_a_split_folder_are_refused_not_dropped(tmp_path):
    root = tmp_path / "d"
    write_image_folder(root / "train", {"a": 2, "b": 2})
    (root / "test").mkdir()
    Image.fromarray(smooth_image(np.random.default_rng(0), 16)).save(root / "test" / "x.jpg")
    result = build(root, tmp_path / "s.zarr")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(f"test/ holds no class folders with images; expected {root}/test/<class>/<image>")
    )


@pytest.mark.parametrize("where", ["top", "in-a-class", "in-train"])
def test_out_inside_source_is_never_read_as_images(tmp_path, where):
    root = tmp_path / "d"
    if where == "in-train":
        split_layout(root, val=None)
        out = root / "train" / "aug.zarr"
    else:
        write_image_folder(root, {"a": 4, "b": 4})
        out = root / ("aug.zarr" if where == "top" else "a/aug.zarr")
    first = build(root, out)
    assert first.returncode == 0, first.stderr
    before = zarr.open_group(str(out), mode="r").attrs.asdict()
    assert before["class_names"] == ["a", "b"]

    # run again: the store is there now, with its zarr.json and chunk files c/0/0...
    assert (out / "zarr.json").is_file() and any((out / "train" / "images").rglob("c/*"))
    again = build(root, out)
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    assert f"not used: {out}: the store this build writes (--out), not images" in again.stderr
    rebuilt = build(root, out, "--overwrite")
    assert rebuilt.returncode == 0, rebuilt.stderr
    after = zarr.open_group(str(out), mode="r").attrs.asdict()
    assert after["class_names"] == ["a", "b"]
    assert after["source"]["content_hash"] == before["source"]["content_hash"]
    assert after["source"]["train_count"] == before["source"]["train_count"]

    # any zarr store below the source is data, not a class, whoever's --out it was
    elsewhere = tmp_path / "elsewhere.zarr"
    other = build(root, elsewhere)
    assert other.returncode == 0, other.stderr
    assert zarr.open_group(str(elsewhere), mode="r").attrs["source"]["content_hash"] == before["source"]["content_hash"]
    assert f"not used: {out}: a zarr store, not images" in other.stderr


def test_an_unfinished_store_inside_the_source_is_not_read(tmp_path):
    """A build that stopped on a bad image leaves .build/ in --out (inside the source); after
    the bad image is removed, the rerun resumes it, reading only the images."""
    root = write_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    bad = root / "b" / "zzz.jpg"
    bad.write_bytes(b"not a jpeg")
    out = root / "aug.zarr"
    stopped = build(root, out)
    assert stopped.returncode == 1 and (out / ".build").is_dir()
    bad.unlink()
    resumed = build(root, out)
    assert resumed.returncode == 0, resumed.stderr
    assert zarr.open_group(str(out), mode="r").attrs["class_names"] == ["a", "b"]


def test_a_store_as_source_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "d", {"a": 2, "b": 2})
    build(root, tmp_path / "s.zarr").check_returncode()
    result = build(tmp_path / "s.zarr", tmp_path / "t.zarr")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"build-aug: error: --source {tmp_path / 's.zarr'} is a zarr store, not an image folder")
    )


# --- EXIF orientation (point 8) -----------------------------------------------------------------


def save_oriented(path: Path, pixels_stored: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(pixels_stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))


def test_probe_size_is_the_decoded_size_for_every_orientation(tmp_path):
    stored = smooth_image(np.random.default_rng(0), 24)[:16]  # 24 wide, 16 high as stored
    for orientation in range(1, 9):
        for suffix in (".jpg", ".png", ".webp"):
            path = tmp_path / f"o{orientation}{suffix}"
            save_oriented(path, stored, orientation)
            assert probe_size(path) == read_image_file(path)[0].shape[:2], (orientation, suffix)
            assert probe_size(path) == ((24, 16) if orientation >= 5 else (16, 24))


def test_portrait_phone_photos_build_without_image_size(tmp_path):
    """Same-size portrait photos, stored landscape with EXIF orientation 6 (or 8), beside ones stored
    upright: all are 16 wide and 24 high once oriented, so no --image-size is needed."""
    rng = np.random.default_rng(1)
    root = tmp_path / "phone"
    for name, count in {"a": 3, "b": 3}.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            landscape = smooth_image(rng, 24)[:16]  # as the sensor stores it: 24 wide, 16 high
            save_oriented(root / name / f"{i}.jpg", landscape, 6 if i % 2 == 0 else 8)
        Image.fromarray(smooth_image(rng, 24)[:, :16]).save(root / name / "upright.jpg", quality=95)
    out = tmp_path / "s.zarr"
    result = build(root, out)
    assert result.returncode == 0, result.stderr
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["image_shape"] == [24, 16, 3]
    assert group["train/images"].shape[1:] == (24, 16, 3)


# --- evaluate --source on a split folder ------------------------------------------------------


def test_evaluate_on_a_split_folder_uses_its_held_out_part(tmp_path):
    root = split_layout(tmp_path / "d")
    store = tmp_path / "s.zarr"
    build(root, store, "--quiet").check_returncode()
    from augzarr.trainer.evaluate import evaluate_on_source
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"  # trained and judged in this process (Keras loads once): what evaluate --source runs
    train_run(
        {"store": str(store), "model": "shallow", "epochs": 1, "batch_size": 8},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    on_test, _ = evaluate_on_source(run_dir, root, 256)
    assert on_test["count"] == 3 and on_test["data"].endswith("(test/ part)")
    shutil.rmtree(root / "test")
    on_val, _ = evaluate_on_source(run_dir, root, 256)
    assert on_val["count"] == 3 and on_val["data"].endswith("(val/ part)")


def test_previews_written_inside_the_source_are_never_read_as_a_class(tmp_path):
    """`cd photos; build-aug --source .` writes preview/ into the source: the next run must not take it for a class."""
    root = write_image_folder(tmp_path / "d", {"a": 4, "b": 4})
    args = [
        "build-aug",
        "--source",
        str(root),
        "--out",
        str(tmp_path / "s.zarr"),
        "--copies",
        "1",
        "--workers",
        "1",
        "--preview",
        "2",
        "--preview-dir",
        str(root / "preview"),
    ]
    first = run_cli(*args)
    assert first.returncode == 0 and any((root / "preview").glob("*.jpeg")), first.stderr
    again = run_cli(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert f"not used: {root / 'preview'}: the previews this build writes (--preview-dir), not images" in again.stderr
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["class_names"] == ["a", "b"]
