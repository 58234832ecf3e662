"""The misuse cases of the robustness campaign (issue #9): source layouts, policies, build inputs,
corrupted arrays and concurrent writers, each set up for real in a scratch folder and run through
the commands. Every case must end in one of three ways:

  store    a correct store (or run): exit 0 and `inspect-aug --verify` passes, plus the case's own check
  refusal  a one-line error: non-zero exit, exactly one line on stderr holding the expected words
  warning  a correct store and a `warning:` line holding the expected words

and never in a traceback or a silently wrong store. campaign.py runs them all and prints the counts
(RELIABILITY.md); the tests run a fast selection (tests/test_campaigns.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import numpy as np
import zarr
from conftest import BIN, run_cli, smooth_image, write_cifar_archive, write_image_folder
from PIL import Image

Check = Callable[[Path], tuple[str, bool, str]]  # work folder -> (outcome, as expected, detail)


def cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)


def refused(result: subprocess.CompletedProcess, words: str) -> tuple[str, bool, str]:
    lines = result.stderr.strip().splitlines()
    ok = result.returncode != 0 and len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr
    return "refusal", ok, lines[0] if len(lines) == 1 else result.stderr.strip()[-300:]


def built(
    result: subprocess.CompletedProcess,
    store: Path,
    check: Callable[[dict], bool] = lambda attrs: True,
    warning: str | None = None,
) -> tuple[str, bool, str]:
    if result.returncode != 0 or "Traceback" in result.stderr:
        return "store", False, result.stderr.strip()[-300:]
    verified = cli("inspect-aug", "--store", str(store), "--verify")
    attrs = zarr.open_group(str(store), mode="r").attrs.asdict()
    ok = verified.returncode == 0 and check(attrs)
    if warning is not None:
        warned = [line for line in result.stderr.splitlines() if line.startswith("warning:") and warning in line]
        return "warning", ok and bool(warned), (warned or [result.stderr.strip()[-200:]])[0]
    return "store", ok, verified.stdout.strip()[-200:] or verified.stderr.strip()[-200:]


BUILD_DEFAULTS = {
    "--copies": "1",
    "--preview": "0",
    "--workers": "1",
}  # unless a case gives its own: an option is given once


def build(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    defaults = [word for flag, value in BUILD_DEFAULTS.items() if flag not in extra for word in (flag, value)]
    return cli("build-aug", "--source", str(source), "--out", str(out), *defaults, "--quiet", *extra)


# -- layouts --------------------------------------------------------------------------------------------


def split_folder(root: Path, **parts: dict[str, int]) -> Path:
    for part, classes in parts.items():
        write_image_folder(root / part, classes, seed=len(part))
    return root


def layout_case(
    make: Callable[[Path], Path], expect: str, words: str = "", check: Callable[[dict], bool] = lambda a: True
) -> Check:
    def run(work: Path):
        source = make(work / "src")
        out = work / "s.zarr"
        result = build(source, out)
        return refused(result, words) if expect == "refusal" else built(result, out, check)

    return run


def out_inside_source(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4})
    out = source / "aug.zarr"
    first, second = build(source, out), build(source, out, "--overwrite")
    return built(second if first.returncode == 0 else first, out, lambda a: a["class_names"] == ["a", "b"])


def previews_inside_source(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4})
    out = work / "s.zarr"
    args = ["--preview", "2", "--preview-dir", str(source / "preview")]
    build(source, out, *args)
    return built(build(source, out, *args, "--overwrite"), out, lambda a: a["class_names"] == ["a", "b"])


def portrait_photos(work: Path):
    source = work / "src"
    for name in ("a", "b"):
        (source / name).mkdir(parents=True)
        for i in range(3):
            exif = Image.Exif()
            exif[0x0112] = 6  # stored landscape 24x16, shown portrait 16x24
            Image.fromarray(smooth_image(np.random.default_rng(i), 24)[:16]).save(source / name / f"{i}.jpg", exif=exif)
    out = work / "s.zarr"
    return built(build(source, out), out, lambda a: a["image_shape"] == [24, 16, 3])


LAYOUTS: dict[str, Check] = {
    "flat": layout_case(
        lambda r: write_image_folder(r, {"a": 4, "b": 4}),
        "store",
        check=lambda a: a["class_names"] == ["a", "b"] and a["source"]["layout"] == "flat",
    ),
    "train/test": layout_case(
        lambda r: split_folder(r, train={"a": 4, "b": 4}, test={"a": 2, "b": 2}),
        "store",
        check=lambda a: "test" in a["splits"] and a["class_names"] == ["a", "b"],
    ),
    "train/valid/test": layout_case(
        lambda r: split_folder(r, train={"a": 4, "b": 4}, valid={"a": 2, "b": 1}, test={"a": 2, "b": 2}),
        "store",
        check=lambda a: a["source"]["val_count"] == 3 and a["val_fraction"] is None,
    ),
    "train/test + another folder": layout_case(
        lambda r: split_folder(r, train={"a": 4, "b": 4}, test={"a": 2, "b": 2}, extra={"x": 2}),
        "refusal",
        "cannot tell its layout",
    ),
    "val/ and valid/": layout_case(
        lambda r: split_folder(r, train={"a": 4, "b": 4}, val={"a": 1, "b": 1}, valid={"a": 1, "b": 1}),
        "refusal",
        "both val/ and valid/",
    ),
    "test/ without train/": layout_case(
        lambda r: split_folder(r, test={"a": 2, "b": 2}), "refusal", "test/ without train/"
    ),
    "valid/ class train/ lacks": layout_case(
        lambda r: split_folder(r, train={"a": 4, "b": 4}, valid={"z": 1}),
        "refusal",
        "valid/ has classes that train/ lacks: z",
    ),
    "--out inside --source": out_inside_source,
    "--preview-dir inside --source": previews_inside_source,
    "EXIF portrait photos": portrait_photos,
}


# -- policies -------------------------------------------------------------------------------------------


def policy_case(pipeline: Callable[[], A.BaseCompose] | str, expect: str, words: str = "") -> Check:
    def run(work: Path):
        source = write_image_folder(work / "src", {"cat": 20, "dog": 20}, size=32)
        if isinstance(pipeline, str):
            spec = pipeline
        else:
            spec = str(work / "policy.json")
            A.save(pipeline(), spec, data_format="json")
        out = work / "s.zarr"
        result = build(source, out, "--policy", spec, "--copies", "10", "--chunk-size", "16")
        return refused(result, words) if expect == "refusal" else built(result, out)

    return run


POLICIES: dict[str, Check] = {
    "Normalize(p=0.1)": policy_case(
        lambda: A.Compose([A.Normalize(p=0.1)]), "refusal", "Normalize(p=0.1) changes a 32x32x3 uint8 image"
    ),
    "Resize(16, 16, p=0.1)": policy_case(
        lambda: A.Compose([A.Resize(16, 16, p=0.1)]), "refusal", "Resize(height=16, width=16, p=0.1)"
    ),
    "OneOf([RandomCrop(28, 28), HorizontalFlip()])": policy_case(
        lambda: A.Compose([A.OneOf([A.RandomCrop(28, 28), A.HorizontalFlip()])]),
        "refusal",
        "RandomCrop(height=28, width=28)",
    ),
    "ToFloat()": policy_case(lambda: A.Compose([A.ToFloat()]), "refusal", "ToFloat"),
    "RandomCrop(40, 40)": policy_case(
        lambda: A.Compose([A.RandomCrop(40, 40)]), "refusal", "RandomCrop(height=40, width=40)"
    ),
    "RandomScale, rarely 33 px (caught at its row)": policy_case(
        lambda: A.Compose([A.HorizontalFlip(), A.RandomScale(scale_limit=(0, 0.0313), p=1)]),
        "refusal",
        "into 33x33x3 uint8 on source image",
    ),
    "flip and brightness with p < 1": policy_case(
        lambda: A.Compose([A.HorizontalFlip(p=0.3), A.RandomBrightnessContrast(p=0.5)]), "store"
    ),
    "pad, then crop back": policy_case(lambda: A.Compose([A.PadIfNeeded(40, 40), A.RandomCrop(32, 32)]), "store"),
    "preset crop-flip": policy_case("crop-flip", "store"),
    "preset notebook": policy_case("notebook", "store"),
}


# -- build inputs ---------------------------------------------------------------------------------------


def one_class(work: Path):
    return refused(
        build(write_image_folder(work / "src", {"a": 6}), work / "s.zarr"), "a classifier needs at least 2 classes"
    )


def tiny_classes(work: Path):
    source = write_image_folder(work / "src", {f"c{i:03d}": 2 for i in range(300)}, size=8)
    out = work / "s.zarr"
    return built(
        build(source, out, "--val-fraction", "0.2"),
        out,
        lambda a: zarr.open_group(str(out), mode="r")["val/labels"].shape[0] == 120,
    )


def no_validation(work: Path):
    archive = work / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=1, per_batch=20, n_test=10)
    out = work / "s.zarr"
    return built(
        build(archive, out, "--val-fraction", "0"),
        out,
        lambda a: "val" not in a["splits"],
        warning="no validation split",
    )


def mixed_sizes_then_image_size(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4}, size=16)
    Image.fromarray(smooth_image(np.random.default_rng(1), 24)).save(source / "a" / "big.jpg")
    out = work / "s.zarr"
    first = build(source, out)
    if first.returncode == 0 or "--image-size" not in first.stderr:
        return "store", False, "mixed sizes were not refused with the --image-size hint"
    return built(build(source, out, "--image-size", "16"), out, lambda a: a["image_shape"] == [16, 16, 3])


def bad_image_then_skip_bad(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4})
    (source / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    out = work / "s.zarr"
    first = build(source, out)
    if first.returncode == 0 or "--skip-bad" not in first.stderr:
        return "store", False, "the bad image's error did not suggest --skip-bad"
    return built(build(source, out, "--skip-bad"), out, lambda a: len(a["skipped"]) == 1)


def preview_dir_under_a_file(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4})
    (work / "file").write_text("not a folder")
    return refused(
        build(source, work / "s.zarr", "--preview", "2", "--preview-dir", str(work / "file" / "preview")),
        "--preview-dir",
    )


def newline_in_a_bad_file_name(work: Path):
    source = write_image_folder(work / "src", {"a": 4, "b": 4})
    (source / "a" / "bad\nname.jpg").write_bytes(b"")
    return refused(build(source, work / "s.zarr"), "bad\\nname.jpg")


BUILD_INPUTS: dict[str, Check] = {
    "a source of 1 class": one_class,
    "300 classes of 2 images, --val-fraction 0.2": tiny_classes,
    "--val-fraction 0": no_validation,
    "mixed sizes, then --image-size": mixed_sizes_then_image_size,
    "a bad image, then --skip-bad": bad_image_then_skip_bad,
    "--preview-dir under a file": preview_dir_under_a_file,
    "a newline in a bad file's name": newline_in_a_bad_file_name,
}


# -- corrupted arrays -----------------------------------------------------------------------------------


def reference_store(work: Path) -> Path:
    """A store with train, val and test splits, several image chunks each; built once per campaign."""
    store = work / "reference.zarr"
    if not store.exists():
        archive = work / "cifar-10-python.tar.gz"
        write_cifar_archive(archive, n_batches=2, per_batch=30, n_test=20)
        result = build(archive, store, "--chunk-size", "16")
        if result.returncode:
            raise RuntimeError(f"could not build the reference store: {result.stderr}")
    return store


def chunk_files(store: Path, split: str, array: str) -> list[Path]:
    return sorted(p for p in (store / split / array / "c").rglob("*") if p.is_file())


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "delete":
        file.unlink()
    elif how == "truncate":
        file.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(flipped))


def corrupted_case(split: str, array: str, how: str) -> Check:
    def run(work: Path):
        store = work / "damaged.zarr"
        shutil.copytree(reference_store(work.parent), store)
        victim = chunk_files(store, split, array)[0]
        damage(victim, how)
        if array == "images" and how == "flip":  # same size: only the checksums of --verify can see it
            verify = cli("inspect-aug", "--store", str(store), "--verify")
            named = [line for line in verify.stderr.splitlines() if line.startswith("damaged:") and str(victim) in line]
            ok = (
                verify.returncode == 1
                and bool(named)
                and "failed verification" in verify.stderr
                and "Traceback" not in verify.stderr
            )
            return "refusal", ok, (named or [verify.stderr.strip()[-300:]])[0]
        return refused(cli("inspect-aug", "--store", str(store)), "is damaged")

    return run


CORRUPTED: dict[str, Check] = {
    f"{split}/{array} chunk: {how}": corrupted_case(split, array, how)
    for split in ("train", "val", "test")
    for array in ("images", "labels", "source_index", "copy_index")
    for how in ("delete", "truncate", "flip")
}


# -- concurrent writers ---------------------------------------------------------------------------------


def started(args: list[str], ready: Callable[[], bool], pause: bool = False, timeout: float = 120) -> subprocess.Popen:
    """Start a command in its own process group and wait until ready(); with pause, then stop the group
    (SIGSTOP): it stays alive and holds its locks however fast this machine would have finished it."""
    process = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    if pause:
        os.killpg(process.pid, signal.SIGSTOP)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def long_build(work: Path) -> tuple[list[str], Path]:
    source = write_image_folder(work / "src", {"a": 300, "b": 300}, size=16)
    out = work / "s.zarr"
    return [
        "build-aug",
        "--source",
        str(source),
        "--out",
        str(out),
        "--copies",
        "20",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--workers",
        "1",
        "--quiet",
    ], out


def second_build(work: Path):
    args, out = long_build(work)
    first = started(args, lambda: any((out / ".build" / "chunks").rglob("train.*")), pause=True)
    try:
        return refused(cli(*args), "another build-aug is writing")
    finally:
        stop(first)


def train_while_building(work: Path):
    args, out = long_build(work)
    first = started(args, lambda: any((out / ".build" / "chunks").rglob("train.*")), pause=True)
    try:
        result = cli("train", "--store", str(out), "--epochs", "1", "--out", str(work / "run"))
        outcome = refused(result, "unfinished build")
        return outcome[0], outcome[1] and not (work / "run").exists(), outcome[2]
    finally:
        stop(first)


def live_run(work: Path) -> tuple[list[str], Path]:
    source = write_image_folder(work / "src", {"a": 40, "b": 40}, size=16)
    store = work / "s.zarr"
    if build(source, store).returncode:
        raise RuntimeError("could not build the training store")
    run_dir = work / "run"
    return [
        "train",
        "--store",
        str(store),
        "--epochs",
        "100000",
        "--batch-size",
        "8",
        "--model",
        "shallow",
        "--quiet",
        "--out",
        str(run_dir),
    ], run_dir


def second_train(extra: list[str]) -> Check:
    def run(work: Path):
        args, run_dir = live_run(work)
        first = started(args, lambda: (run_dir / "state" / "progress.json").exists())
        try:
            second = cli(*args) if not extra else cli("train", *extra, "--out", str(run_dir))
            return refused(second, "another train is writing")
        finally:
            stop(first)

    return run


CONCURRENCY: dict[str, Check] = {
    "a second build-aug into a store being built": second_build,
    "train on a store being built": train_while_building,
    "a second train into a live run folder": second_train([]),
    "train --resume on a live run": second_train(["--resume"]),
}


CATEGORIES: dict[str, dict[str, Check]] = {
    "layouts": LAYOUTS,
    "policies": POLICIES,
    "build inputs": BUILD_INPUTS,
    "corrupted arrays": CORRUPTED,
    "concurrency": CONCURRENCY,
}
EXPECTED_OUTCOMES = ("store", "refusal", "warning")


def run_cases(work: Path, select: Callable[[str, str], bool] = lambda category, case: True) -> list[dict]:
    """Run the selected cases, each in a folder of its own under work."""
    trials = []
    for category, cases in CATEGORIES.items():
        for number, (case, check) in enumerate(cases.items()):
            if not select(category, case):
                continue
            folder = work / "misuse" / f"{category.replace(' ', '-')}-{number}"
            folder.mkdir(parents=True, exist_ok=True)
            try:
                outcome, ok, detail = check(folder)
            except Exception as exc:  # a broken set-up is reported as a failed case, not a crash of the campaign
                outcome, ok, detail = "error", False, f"{type(exc).__name__}: {exc}"
            trials.append({"category": category, "case": case, "outcome": outcome, "ok": ok, "detail": detail})
            shutil.rmtree(folder, ignore_errors=True)
    return trials


FAST_FORM = {
    "layouts": "test/ without train/",
    "policies": "ToFloat()",
    "build inputs": "--val-fraction 0",
    "corrupted arrays": "test/images chunk: flip",
    "concurrency": "train on a store being built",
}
FAST_FORM_EXTRA = {"policies": "flip and brightness with p < 1"}  # a correct store: every outcome in the fast form


def fast_selection(category: str, case: str) -> bool:
    """One case of each kind for CI, and one correct store: the cheapest, and where a kind has one, the case that
    no other test covers (ToFloat(), train on a store being built); the campaign runs them all. Every other case is also tested in its own file: the layouts in
    test_layout_detection.py, the policies in test_policy_checks.py, the build inputs in test_build_checks.py and
    test_run_checks.py, the damaged arrays in test_store_checks.py and test_robustness.py, a second build-aug in
    test_robustness.py and a second train in test_run_checks.py."""
    return case in (FAST_FORM[category], FAST_FORM_EXTRA.get(category))


def counts(trials: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for trial in trials:
        row = table.setdefault(trial["category"], {"tried": 0, "as expected": 0, **{k: 0 for k in EXPECTED_OUTCOMES}})
        row["tried"] += 1
        row["as expected"] += trial["ok"]
        if trial["ok"]:
            row[trial["outcome"]] += 1
    return table
