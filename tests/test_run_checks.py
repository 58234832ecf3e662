"""Issue 9, points 4, 9 and 10: one writer per run folder, outputs that scale with the class count,
and the README's promises (exit codes, evaluate's notes and warnings, Ctrl-C, one-line errors)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, restore_ctrl_c, run_cli, write_image_folder
from PIL import Image

from augzarr.errors import UserError

CLASSES = {"cat": 8, "dog": 8, "emu": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A 3-class 16x16 image folder, its store, and a finished 1-epoch shallow run on it."""
    from augzarr.builder.build import BuildOptions, build_store
    from augzarr.trainer.training import train_run

    root = tmp_path_factory.mktemp("checks")
    folder = write_image_folder(root / "images", CLASSES, size=16)
    store = root / "s.zarr"
    build_store(BuildOptions(source=str(folder), out=store, copies=1, chunk_size=8, val_fraction=0.25, workers=1))
    run_dir = root / "run"
    train_run(
        {"store": str(store), "epochs": 1, "batch_size": 8, "model": "shallow"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    return {"root": root, "folder": folder, "store": store, "run": run_dir}


# -- point 10: exit codes -----------------------------------------------------------------------------

BAD_OPTIONS = [  # every bad option exits 2, whether typer or our range checks refuse it
    ("build-aug", "--copies", "-1", "--copies must be in [0, 10000]"),
    ("build-aug", "--val-fraction", "1.5", "--val-fraction must be in [0, 1)"),
    ("build-aug", "--preview", "-1", "--preview must be in [0, 256]"),
    ("build-aug", "--policy", "no-such-preset", "unknown policy"),
    ("build-aug", "--copies", "many", "'--copies'"),
    ("inspect-aug", "--preview", "1000", "--preview must be in [0, 256]"),
    ("train", "--epochs", "0", "--epochs must be in [1, 100000]"),
    ("train", "--learning-rate", "-1", "--learning-rate must be in (0, 10.0]"),
    ("train", "--optimizer", "lion", "--optimizer must be one of"),
    ("evaluate", "--batch-size", "0", "--batch-size must be in [1, 65536]"),
    ("evaluate", "--split", "train", "--split"),
]


@pytest.mark.parametrize("command, option, value, message", BAD_OPTIONS)
def test_every_bad_option_exits_2_with_one_line(command, option, value, message, tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 2, "b": 2}, size=8)
    base = {
        "build-aug": ["--source", str(folder), "--out", str(tmp_path / "s.zarr"), "--quiet"],
        "inspect-aug": ["--store", str(tmp_path / "s.zarr")],
        "train": ["--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run")],
        "evaluate": ["--model", str(tmp_path / "run"), "--store", str(tmp_path / "s.zarr")],
    }[command]
    result = run_cli(command, *base, option, value)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "run").exists()


def test_options_that_cannot_go_together_exit_2_and_bad_inputs_still_exit_1(tmp_path):
    both = run_cli("evaluate", "--model", str(tmp_path), "--store", str(tmp_path / "s"), "--source", str(tmp_path))
    neither = run_cli("evaluate", "--model", str(tmp_path))
    split_on_folder = run_cli("evaluate", "--model", str(tmp_path), "--source", str(tmp_path), "--split", "val")
    for result, message in (
        (both, "exactly one of --store"),
        (neither, "exactly one of --store"),
        (split_on_folder, "--split applies to --store only"),
    ):
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    # bad input files and stores in the wrong state are not option errors: exit 1
    missing_source = run_cli(
        "build-aug", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "s.zarr"), "--quiet"
    )
    missing_store = run_cli("inspect-aug", "--store", str(tmp_path / "nope.zarr"))
    not_a_run = run_cli("evaluate", "--model", str(tmp_path), "--source", str(tmp_path))
    for result, message in (
        (missing_source, "no such file or folder"),
        (missing_store, "does not exist"),
        (not_a_run, "not a train run folder"),
    ):
        assert result.returncode == 1 and message in result.stderr.strip().splitlines()[-1], result.stderr


# -- point 10: one line, whatever a file name holds ---------------------------------------------------


def test_a_bad_image_whose_name_holds_a_newline_gives_exactly_one_line(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=8)
    (folder / "a" / "bad\nname.jpg").write_bytes(b"not an image at all")
    result = run_cli(
        "build-aug", "--source", str(folder), "--out", str(tmp_path / "s.zarr"), "--quiet", "--preview", "0"
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
    assert "bad\\nname.jpg" in result.stderr and result.stderr.startswith("build-aug: error: cannot decode image")
    skipped = run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "skipping.zarr"),
        "--quiet",
        "--preview",
        "0",
        "--skip-bad",
    )
    assert skipped.returncode == 0, skipped.stderr
    named = [line for line in skipped.stderr.splitlines() if "bad\\nname.jpg" in line]
    assert (
        len(named) == 1
        and named[0].startswith("warning: skipped:")
        and "name.jpg" not in skipped.stderr.replace(named[0], "")
    )


def test_fail_escapes_every_control_character():
    from augzarr.errors import one_line

    assert one_line("a\nb\rc\td\x1be\u2028f\udcffg é 猫") == "a\\nb\\rc\\td\\x1be\\u2028f\\udcffg é 猫"
    failed = subprocess.run(
        [sys.executable, "-c", "from augzarr.cli_support import fail; fail('x', 'one\\ntwo\\x1b[2J', 1)"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and failed.stderr == "x: error: one\\ntwo\\x1b[2J\n"


NATIVE_THREAD_AT_EXIT = """
import asyncio, os, sys, threading, time
import obstore, typer
from obstore.store import MemoryStore


class SlowToWake(asyncio.SelectorEventLoop):
    # obstore's tokio thread hands each result over here; it then waits without the GIL, as a busy machine makes it
    def call_soon_threadsafe(self, *args, **kwargs):
        handle = super().call_soon_threadsafe(*args, **kwargs)
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.5)
        return handle


class SlowToFinalize:
    def __del__(self, sleep=time.sleep):
        sleep(2)  # freed by the interpreter's last collection, once it finalizes: the GIL is free meanwhile


app = typer.Typer()


@app.command()
def read() -> None:
    store = MemoryStore()
    obstore.put(store, "key", b"bytes")

    async def get():
        return bytes(await (await obstore.get_async(store, "key")).bytes_async())

    print(SlowToWake().run_until_complete(get()).decode())
    cycle = SlowToFinalize()
    cycle.itself = cycle


if sys.argv[1] == "plain":
    app(standalone_mode=False, args=[])
else:
    from augzarr.cli_support import run_app

    sys.argv = sys.argv[:1]
    run_app(app, "read")
"""


def test_a_command_ends_well_while_a_native_thread_hands_back_a_result(tmp_path):
    """The CI failure of a build to S3 that printed "built ..." and died of SIGABRT: obstore's tokio thread, waking
    asyncio's loop with the GIL released, asked for it back once the interpreter was finalizing, and CPython ended
    that thread inside Rust. The commands end with os._exit once atexit has run (cli_support.end_process)."""
    script = tmp_path / "read.py"
    script.write_text(NATIVE_THREAD_AT_EXIT)
    plain, command = (
        subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=60)
        for how in ("plain", "run_app")
    )
    if sys.version_info < (3, 14):  # 3.14 lets such a thread hang instead of ending it (cpython#87135)
        assert plain.returncode == -signal.SIGABRT, (plain.returncode, plain.stderr)
    assert (command.returncode, command.stdout, command.stderr) == (0, "bytes\n", "")


# -- point 10: evaluate's notes, warning and Ctrl-C ---------------------------------------------------


def test_evaluate_on_other_sized_images_says_it_resized_them(trained, tmp_path):
    folder = write_image_folder(tmp_path / "photos", {"dog": 2, "emu": 1}, size=24, seed=7)
    Image.new("RGB", (40, 30), "red").save(folder / "dog" / "wide.png")
    result = run_cli(
        "evaluate",
        "--model",
        str(trained["run"]),
        "--source",
        str(folder),
        "--json",
        str(tmp_path / "e.json"),
        check=True,
    )
    assert "resized 4 images (3 from 24x24, 1 from 40x30) to the model's 16x16" in result.stdout
    assert json.loads((tmp_path / "e.json").read_text())["resized"] == {"to": "16x16", "from": {"24x24": 3, "40x30": 1}}
    assert "warning" not in result.stderr  # other images: a held-out score, no warning
    same_size = write_image_folder(tmp_path / "small", {"cat": 2}, size=16, seed=9)
    quiet = run_cli("evaluate", "--model", str(trained["run"]), "--source", str(same_size), check=True)
    assert "resized" not in quiet.stdout


def test_evaluate_on_the_training_source_warns_it_is_not_held_out(trained, tmp_path):
    run = json.loads((trained["run"] / "run.json").read_text())
    assert run["store_source"]["location"] == str(trained["folder"].absolute()) and run["store_source"][
        "content_hash"
    ].startswith("sha256:")
    copy = tmp_path / "copied"
    shutil.copytree(trained["folder"], copy)  # another path, the same files: recognised by the content hash
    for folder in (trained["folder"], copy):
        result = run_cli(
            "evaluate",
            "--model",
            str(trained["run"]),
            "--source",
            str(folder),
            "--json",
            str(tmp_path / "e.json"),
            check=True,
        )
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and "not a held-out score" in warnings[0] and str(folder) in warnings[0], (
            result.stderr
        )
        assert json.loads((tmp_path / "e.json").read_text())["training_source"] is True
    (copy / "cat" / "0000.jpg").unlink()  # no longer the same folder, but still its training images (issue 21 point 6)
    changed = run_cli("evaluate", "--model", str(trained["run"]), "--source", str(copy), check=True)
    trained_left = sum(training_originals(trained["store"]).values()) - (
        trained["folder"] / "cat" / "0000.jpg" not in held_out_files(trained["store"], trained["folder"])
    )
    assert f"{copy}: {trained_left} of its 23 images were in the model's training data" in changed.stderr, (
        changed.stderr
    )


# -- issue 21 point 11: messages with counts and articles that are right, and that stay short ---------


def test_counts_and_articles_read_right():
    from augzarr.wording import article, count, listed

    assert [count(n, "problem") for n in (0, 1, 2, 1234)] == ["0 problems", "1 problem", "2 problems", "1,234 problems"]
    assert (
        count(1, "class") == "1 class"
        and count(3, "class") == "3 classes"
        and count(2, "file or folder", "files or folders") == "2 files or folders"
    )
    assert count(2, "epoch") == "2 epochs" and count(2, "batch") == "2 batches" and count(3, "box") == "3 boxes"
    assert [
        article(w)
        for w in (
            "int",
            "float",
            "uint8",
            "ndarray",
            "hour",
            "8x8x3 uint8",
            "16x16x3 uint8",
            "11x11",
            "18x18",
            "180x180",
            "11,000",
        )
    ] == [
        "an int",
        "a float",
        "a uint8",
        "an ndarray",
        "an hour",
        "an 8x8x3 uint8",
        "a 16x16x3 uint8",
        "an 11x11",
        "an 18x18",
        "a 180x180",
        "an 11,000",
    ]
    assert listed(["a", "b"]) == "a, b" and listed(range(9), limit=3) == "0, 1, 2 and 6 more"


def test_evaluate_summarises_many_source_sizes_and_unknown_classes(trained, tmp_path):
    from augzarr.trainer.evaluate import RESIZE_EXAMPLES

    folder = tmp_path / "photos"
    sizes = [(20 + i, 10 + i) for i in range(8)]
    for i, (width, height) in enumerate(sizes):
        (folder / "cat").mkdir(parents=True, exist_ok=True)
        for copy in range(1 + (i == 5)):  # 25x15 twice: the most common size
            Image.new("RGB", (width, height), (i * 20, 0, 0)).save(folder / "cat" / f"{i}-{copy}.png")
    result = run_cli(
        "evaluate",
        "--model",
        str(trained["run"]),
        "--source",
        str(folder),
        "--json",
        str(tmp_path / "e.json"),
        check=True,
    )
    [note] = [line for line in result.stdout.splitlines() if line.startswith("resized")]
    assert note == (
        "resized 9 images from 8 different sizes (2 from 25x15, 1 from 20x10, 1 from 21x11, and 5 other sizes) "
        "to the model's 16x16"
    ), note
    assert (
        RESIZE_EXAMPLES == 3 and len(json.loads((tmp_path / "e.json").read_text())["resized"]["from"]) == 8
    )  # every size in the JSON
    for name in ("zebra", "yak", "wolf", "vole", "tapir", "stoat", "rhea"):  # 7 classes the model does not know
        shutil.copytree(folder / "cat", folder / name)
    refused = run_cli("evaluate", "--model", str(trained["run"]), "--source", str(folder))
    [line] = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and line.endswith(
        ": 7 classes the model does not know: rhea, stoat, tapir, vole, wolf and 2 more "
        "(it knows 3 classes: cat, dog, emu)"
    ), line


def test_a_source_with_many_files_not_used_lists_only_the_first(tmp_path):
    from augzarr.wording import SHOWN_LINES

    folder = write_image_folder(tmp_path / "imgs", {"a": 3, "b": 3}, size=8)
    for i in range(SHOWN_LINES + 5):
        (folder / "a" / f"notes-{i:02d}.txt").write_text("not an image")
    result = run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "s.zarr"),
        "--copies",
        "1",
        "--preview",
        "0",
        check=True,
    )
    not_used = [line for line in result.stderr.splitlines() if line.startswith("warning: not used:")]
    assert len(not_used) == SHOWN_LINES and all("notes-" in line for line in not_used)
    assert (
        f"{SHOWN_LINES + 5} files or folders of the source were not used (the first {SHOWN_LINES} listed above, all in the "
        "store's attrs 'source.ignored')"
    ) in result.stdout, result.stdout


# -- issue 21 point 6: training images recognised by content, in a part of the source too -------------


def training_originals(store: Path) -> dict[str, int]:
    """Class -> how many of its source images have rows in the store's train/ (the originals are copy 0)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    labels = group["train/labels"][:][group["train/copy_index"][:] == 0]
    return dict(
        zip(group.attrs["class_names"], np.bincount(labels, minlength=len(group.attrs["class_names"])).tolist())
    )


def held_out_files(store: Path, folder: Path) -> list[Path]:
    """The source files the store holds out for validation (no copy of them in train/)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    from augzarr.sources.image_folder import scan_image_folder

    files = scan_image_folder(folder, None).train.files
    return [files[i] for i in sorted(set(range(len(files))) - set(group["train/source_index"][:].tolist()))]


def evaluate_warning(run_dir: Path, folder: Path, json_path: Path) -> tuple[list[str], dict]:
    result = run_cli("evaluate", "--model", str(run_dir), "--source", str(folder), "--json", str(json_path), check=True)
    return [line for line in result.stderr.splitlines() if line.startswith(("warning:", "note:"))], json.loads(
        json_path.read_text()
    )


def test_evaluate_counts_the_training_images_in_a_part_of_the_source(trained, tmp_path):
    trained_per_class = training_originals(trained["store"])
    two_classes = tmp_path / "two-classes"  # 2 of the 3 class folders: the folder as a whole is no copy of the source
    for name in ("cat", "dog"):
        shutil.copytree(trained["folder"] / name, two_classes / name)
    lines, written = evaluate_warning(trained["run"], two_classes, tmp_path / "e.json")
    expected = trained_per_class["cat"] + trained_per_class["dog"]
    assert 0 < expected < 16  # some held out for validation: a count, not all or nothing
    assert len(lines) == 1 and lines[0].startswith(
        f"warning: --source {two_classes}: {expected} of its 16 images were in the model's training data"
    ), lines
    assert "not a held-out score" in lines[0] and str(trained["store"]) in lines[0]
    assert written["training_source"] is True and written["training_images"]["count"] == expected
    # the validation images alone, renamed and mixed with new ones: held out, so no warning
    held_out = tmp_path / "held-out"
    write_image_folder(held_out, {"emu": 2}, size=16, seed=11)
    for i, file in enumerate(held_out_files(trained["store"], trained["folder"])):
        (held_out / file.parent.name).mkdir(exist_ok=True)
        shutil.copy(file, held_out / file.parent.name / f"renamed-{i}.jpg")
    lines, written = evaluate_warning(trained["run"], held_out, tmp_path / "e.json")
    assert lines == [] and written["training_source"] is False and written["training_images"]["count"] == 0
    # one training image among them: named as one
    first_trained = next(
        f
        for f in sorted((trained["folder"] / "cat").iterdir())
        if f not in held_out_files(trained["store"], trained["folder"])
    )
    (held_out / "cat").mkdir(exist_ok=True)
    shutil.copy(first_trained, held_out / "cat" / "seen.jpg")
    lines, _ = evaluate_warning(trained["run"], held_out, tmp_path / "e.json")
    assert (
        len(lines) == 1 and f": 1 of its {written['count'] + 1} images was in the model's training data" in lines[0]
    ), lines


def test_evaluate_with_a_store_that_cannot_tell_falls_back_to_the_whole_folder_and_says_so(trained, tmp_path):
    old_store = tmp_path / "old.zarr"  # as a store built before the record existed
    shutil.copytree(trained["store"], old_store)
    meta = json.loads((old_store / "train" / "zarr.json").read_text())
    meta["attributes"].pop("file_digests")
    (old_store / "train" / "zarr.json").write_text(json.dumps(meta))
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "options": {**run["options"], "store": str(old_store)}}))
    lines, written = evaluate_warning(
        run_dir, trained["folder"], tmp_path / "e.json"
    )  # the whole source: still recognised
    assert len(lines) == 1 and "holds the images the model's store was built from" in lines[0], lines
    part = tmp_path / "part"
    shutil.copytree(trained["folder"] / "cat", part / "cat")
    lines, written = evaluate_warning(run_dir, part, tmp_path / "e.json")
    assert written["training_images"]["count"] is None and len(lines) == 1, lines
    assert (
        lines[0].startswith("note: the model's training images could not be looked for among these by content")
        and "older augzarr" in lines[0]
    )
    shutil.rmtree(old_store)
    lines, _ = evaluate_warning(run_dir, part, tmp_path / "e.json")
    assert len(lines) == 1 and f"its store {old_store} is not there" in lines[0], lines


def wait_for_mapped(pid: int, library: str, timeout: float = 60) -> None:
    """Until the process has loaded `library`: Python is then running and handles Ctrl-C."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            if library in Path(f"/proc/{pid}/maps").read_text():
                return
        time.sleep(0.02)
    raise AssertionError(f"{library} not loaded in time")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when the child is running")
def test_ctrl_c_in_evaluate_does_not_offer_to_resume(trained, tmp_path):
    process = subprocess.Popen(
        [
            str(BIN / "evaluate"),
            "--model",
            str(trained["run"]),
            "--store",
            str(trained["store"]),
            "--json",
            str(tmp_path / "e.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=restore_ctrl_c,
    )
    wait_for_mapped(process.pid, "_multiarray_umath")  # numpy is loading: well inside evaluate, before any result
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert (
        stderr.strip().splitlines()[-1]
        == "evaluate: error: interrupted: nothing was evaluated or written; run it again for the results"
    )
    assert "resume" not in stderr and "Traceback" not in stderr
    assert not (tmp_path / "e.json").exists()


# -- point 4: one writer per run folder ---------------------------------------------------------------


class Holder:
    """Another process holding a folder's flock, as a live train does."""

    def __init__(self, folder: Path):
        code = (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def unfinished_run(runs: Path, name: str, updated: str | None, mtime: float | None = None) -> Path:
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "running", **({"updated_utc": updated} if updated else {})}))
    if mtime is not None:
        os.utime(folder / "run.json", (mtime, mtime))
    return folder


def test_resume_without_out_picks_the_most_recently_active_unlocked_run(tmp_path):
    from augzarr.trainer.training import latest_unfinished_run

    runs = tmp_path / "runs"
    older_by_name = unfinished_run(runs, "20260101-000000", "2026-11-28T10:00:00.000000Z")  # most recently active
    unfinished_run(runs, "20261231-000000", "2026-11-28T09:00:00.000000Z")  # last by name, active earlier
    unfinished_run(runs, "legacy", None, mtime=time.time() - 3600 * 24 * 365)  # recorded before updated_utc: its mtime
    done = runs / "99999999-999999"
    done.mkdir()
    (done / "run.json").write_text(json.dumps({"status": "complete", "updated_utc": "2099-01-01T00:00:00.000000Z"}))
    with contextlib.ExitStack() as held:
        assert latest_unfinished_run(held, runs) == older_by_name
    holder = Holder(older_by_name)  # now live: skipped
    try:
        with contextlib.ExitStack() as held:
            assert latest_unfinished_run(held, runs).name == "20261231-000000"
    finally:
        holder.release()
    holders = [Holder(p.parent) for p in runs.glob("*/run.json") if p.parent != done]
    try:
        with (
            contextlib.ExitStack() as held,
            pytest.raises(UserError, match="every unfinished run under .* is being written by a live train"),
        ):
            latest_unfinished_run(held, runs)
    finally:
        for holder in holders:
            holder.release()


def test_the_run_lock_is_not_kept_by_a_forked_child(tmp_path):
    from augzarr.trainer.runlock import is_live, release, try_lock

    folder = tmp_path / "run"
    folder.mkdir()
    fd = try_lock(folder)
    assert fd is not None
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # past the fork hooks: says so, then holds on until the parent closes the pipe
        os.close(write_end)
        os.write(ready_write, b"r")
        os.read(read_end, 1)
        os._exit(0)
    try:
        os.close(read_end)
        os.close(ready_write)
        assert os.read(ready_read, 1) == b"r"
        os.close(ready_read)
        release(fd)
        assert not is_live(folder)  # the child's copy was closed when it forked: the lock went with the parent's
    finally:
        os.close(write_end)
        os.waitpid(child, 0)


def test_a_live_run_refuses_a_second_writer_at_once(trained, tmp_path):
    from augzarr.trainer.runlock import is_live

    live = tmp_path / "runs" / "live"
    command = [
        "--store",
        str(trained["store"]),
        "--epochs",
        "100000",
        "--batch-size",
        "8",
        "--model",
        "shallow",
        "--out",
        str(live),
    ]
    log = open(tmp_path / "live.log", "w")  # not a pipe: a full pipe would stall the run
    process = subprocess.Popen(
        [str(BIN / "train"), *command], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
    )
    try:
        deadline = time.time() + 120
        while not (live / "state" / "progress.json").exists():
            assert process.poll() is None and time.time() < deadline, (tmp_path / "live.log").read_text()
            time.sleep(0.05)
        refusal = f"train: error: another train is writing {live} right now: wait for it to finish, or stop it (then train --resume --out {live} continues it)"
        for args in (
            command,  # the same command again
            [*command[:-2], "--out", str(live), "--optimizer", "adam"],  # other options into the same folder
            ["--resume", "--out", str(live)],
        ):
            result = run_cli("train", *args, cwd=tmp_path)
            assert result.returncode == 1 and result.stderr.strip() == refusal, (args, result.stderr)
        alone = run_cli("train", "--resume", cwd=tmp_path)  # the only unfinished run under runs/ is live
        assert (
            alone.returncode == 1
            and alone.stderr.count("\n") == 1
            and "is being written by a live train right now" in alone.stderr
        )
        run = json.loads((live / "run.json").read_text())
        assert run["status"] == "running" and run["updated_utc"] > "2026"
        assert process.poll() is None  # the first run was not disturbed
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    assert not is_live(live)  # the lock died with the process: the run can be resumed


def test_train_run_itself_refuses_a_folder_another_process_holds(trained, tmp_path):
    from augzarr.trainer.training import train_run

    given = {"store": str(trained["store"]), "epochs": 1, "batch_size": 8, "model": "shallow"}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    unfinished = tmp_path / "unfinished"
    shutil.copytree(trained["run"], unfinished)
    run = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**run, "status": "running", "run_dir": str(unfinished)}))
    for folder, resume in (
        (fresh, False),
        (unfinished, True),
        (unfinished, False),
    ):  # a new run, --resume, the same command again
        holder = Holder(folder)
        try:
            with pytest.raises(UserError, match=f"another train is writing {folder} right now"):
                train_run(given, out=folder, resume=resume, verbose=0, say=lambda _: None)
        finally:
            holder.release()
    assert list(fresh.iterdir()) == []  # nothing written into the held folder
    assert json.loads((unfinished / "run.json").read_text())["status"] == "running"


def test_the_run_records_its_last_activity(trained):
    import datetime

    run = json.loads((trained["run"] / "run.json").read_text())
    updated = datetime.datetime.strptime(run["updated_utc"], "%Y-%m-%dT%H:%M:%S.%fZ")
    finished = datetime.datetime.strptime(run["finished_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert run["status"] == "complete" and abs((updated - finished).total_seconds()) < 60


# -- issue 21 point 5: a refused or failed run leaves no run folder behind ------------------------------

FAILS_IN_TRAINING = """
import keras


class FailsInTraining(keras.layers.Layer):
    def call(self, x, training=False):
        if training:
            raise RuntimeError("this layer cannot train")
        return x


def build(image_shape, n_classes):
    return keras.Sequential([keras.Input(image_shape, dtype="uint8"), keras.layers.Rescaling(1 / 255), FailsInTraining(),
                             keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax")])
"""


def refusals_before_the_claim() -> list:
    import keras

    cpus = "/device:CPU:0" if keras.backend.backend() == "tensorflow" else "cpu:0"
    return [
        ({"distribute": True, "devices": "gpu:7"}, f"--devices: gpu:7 not among this machine's ({cpus})"),
        ({"distribute": True, "devices": "cpu:0,banana"}, f"--devices: banana not among this machine's ({cpus})"),
        (
            {"distribute": True, "devices": "cpu:0"},
            "--devices names one device (cpu:0), and --distribute splits each batch over two or more",
        ),
        (
            {"buffer_chunks": 10**8},
            "--buffer-chunks 100000000 would hold 572.2 GiB per window of this store; use at most",
        ),
    ]


def test_every_refusal_comes_before_the_run_folder_is_claimed(small_store, tmp_path):
    """Each check that can refuse a run, from train_run itself (the CLI checks only the options before loading Keras)."""
    from augzarr.trainer.training import train_run

    for given, message in refusals_before_the_claim():
        with pytest.raises(UserError) as caught:
            train_run(
                {"store": str(small_store), "epochs": 1, "model": "shallow", **given},
                out=tmp_path / "never",
                verbose=0,
                say=lambda _: None,
            )
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value), (given, str(caught.value))
        assert not (tmp_path / "never").exists(), given


def test_a_run_that_fails_before_its_first_epoch_gives_its_folder_back(small_store, tmp_path, monkeypatch):
    """A run that fails before any epoch finished holds nothing to resume: its claim is undone, so the corrected
    command may use the same --out (it was refused as "already holds a run"), and the same command does not
    "resume" the failure. An --out that existed empty is left as it was."""
    from augzarr.trainer.training import train_run

    net = tmp_path / "net.py"
    net.write_text(FAILS_IN_TRAINING)
    given = {"store": str(small_store), "model": f"{net}:build", "epochs": 1, "batch_size": 16}
    new, empty = tmp_path / "new", tmp_path / "empty"
    empty.mkdir()
    (empty / "run.json.tmp").write_text("cut short")  # a write cut short before it counted: the folder holds nothing
    monkeypatch.chdir(tmp_path)
    for out in (new, empty, None):  # None: runs/<timestamp>
        with pytest.raises(Exception, match="this layer cannot train"):
            train_run(given, out=out, verbose=0, say=lambda _: None)
    assert (
        not new.exists()
        and [p.name for p in empty.iterdir()] == ["run.json.tmp"]
        and list((tmp_path / "runs").iterdir()) == []
    )
    result = train_run({**given, "model": "shallow"}, out=new, verbose=0, say=lambda _: None)
    assert result.resumed_from == 0 and json.loads((new / "run.json").read_text())["status"] == "complete"


# -- point 9: outputs that scale with the class count -------------------------------------------------


def confusion_metrics(n: int, names: list[str] | None = None) -> dict:
    rng = np.random.default_rng(n)
    confusion = rng.integers(0, 4, (n, n))
    np.fill_diagonal(confusion, 30)
    confusion[2, 1] = 99  # the most confused pair
    return {"confusion_matrix": confusion.tolist(), "class_names": names or [f"class-{i:03d}" for i in range(n)]}


def test_a_300_class_confusion_png_opens_with_pillow(tmp_path):
    from augzarr.trainer.report import plot_confusion

    plot_confusion(confusion_metrics(300), tmp_path / "confusion.png", "300 classes")
    with Image.open(tmp_path / "confusion.png") as image:
        image.load()  # Pillow refused the 18,200 px square figure this used to be
        assert max(image.size) <= 4000


def test_confusion_names_the_classes_when_they_fit_and_lists_the_most_confused_otherwise():
    import matplotlib.pyplot as plt

    from augzarr.trainer.report import confusion_figure

    small = confusion_figure(confusion_metrics(3, ["café", "dog", "emu"]), "three")
    axis = small.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["café", "dog", "emu"]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["café", "dog", "emu"]
    assert len(axis.texts) == 9  # a count in every cell
    plt.close(small)
    big = confusion_figure(confusion_metrics(300), "many")
    side_text = "\n".join(t.get_text() for t in big.axes[1].texts)
    assert side_text.splitlines()[0] == "99  class-002 -> class-001" and len(side_text.splitlines()) == 20
    assert not big.axes[0].texts
    plt.close(big)


def label_area(sheet: Image.Image, row: int, width: int) -> np.ndarray:
    from augzarr.builder.preview import HEADER_HEIGHT

    row_h = (sheet.height - HEADER_HEIGHT) // ROWS
    return np.asarray(sheet.convert("L"))[HEADER_HEIGHT + row * row_h : HEADER_HEIGHT + (row + 1) * row_h, :width]


ROWS = 5
LONG_NAME = "a_very_long_class_name_that_keeps_going_well_past_any_column"[:60]


def sheet_for(names: list[str]) -> Image.Image:
    from augzarr.builder.preview import contact_sheet

    pictures = np.full((3, 16, 16, 3), 128, np.uint8)
    return contact_sheet([(f"{name}\n#{i}", np.arange(3), pictures) for i, name in enumerate(names)])


def test_contact_sheet_draws_non_ascii_names_whole(tmp_path):
    from augzarr.builder.preview import LABEL_WIDTH, MAX_LABEL_WIDTH, label_font, wrap_to_width
    from augzarr.fonts import font_charmap, system_font_paths

    assert len(LONG_NAME) == 60
    names = ["café", "Ωmega", "猫", LONG_NAME, "cat"]
    sheet = sheet_for(names)
    font = label_font(LONG_NAME)
    lines = wrap_to_width(LONG_NAME, font, MAX_LABEL_WIDTH)
    assert "".join(lines) == LONG_NAME and len(lines) == 2  # wrapped, nothing dropped
    label_width = sheet.width - 3 * (16 * 6 + 4)  # what is left of the three image columns
    assert label_width >= max(font.getlength(line) for line in lines) + 6 and label_width > LABEL_WIDTH
    for row in range(ROWS):
        area = label_area(sheet, row, label_width)
        ink = np.argwhere(area < 128)
        assert len(ink), names[row]  # something drawn
        assert ink[:, 1].max() < label_width - 2, names[row]  # and not into the images
    # a glyph, not the font's box for a missing character: compare with a character no font has
    missing = sheet_for(["caf\U0010fffd", "\U0010fffdmega", "\U0010fffd", LONG_NAME, "cat"])
    for row in (0, 1):
        assert not np.array_equal(label_area(sheet, row, label_width), label_area(missing, row, label_width)), names[
            row
        ]
    has_cjk = any(ord("猫") in font_charmap(path) for path in system_font_paths())
    # with a CJK font on the system, 猫 is drawn in it; without one (DejaVu has no CJK) it is drawn as a box, without error
    assert has_cjk != np.array_equal(label_area(sheet, 2, label_width), label_area(missing, 2, label_width))


def test_previews_of_a_store_with_non_ascii_classes(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"café": 3, "Ωmega": 3, LONG_NAME: 3}, size=8)
    result = run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--out",
        str(tmp_path / "s.zarr"),
        "--copies",
        "1",
        "--quiet",
        "--preview",
        "3",
        "--preview-dir",
        str(tmp_path / "prev"),
    )
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "prev" / "contact_sheet.png") as sheet:
        sheet.load()
        assert sheet.width > 400  # the label column widened for the 60-character name
