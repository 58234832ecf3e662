"""The robustness campaign's cases (issue #4): concurrent misuse, corrupted stores, bad images, bad options."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, assert_same_store, run_cli, write_image_folder
from test_build import set_file_size_limit, start_build, wait_for_chunks

from augzarr.store_format import BUILD_DIR


def test_a_second_build_into_the_same_store_refuses_and_the_lock_dies_with_the_first(resumable_case, tmp_path):
    args, reference = resumable_case
    out = tmp_path / "s.zarr"
    first = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 5, first)
    os.killpg(first.pid, signal.SIGSTOP)  # hold the first build mid-way (a suspended laptop), lock and all
    second = run_cli("build-aug", *args, "--out", str(out))
    assert second.returncode == 1
    assert (
        second.stderr.strip()
        == f"build-aug: error: another build-aug is writing {out} right now: wait for it to finish, or stop it, then run this again"
    )
    assert first.poll() is None  # the first build is untouched

    train = run_cli("train", "--store", str(out), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert train.returncode == 1 and "incomplete" in train.stderr and not (tmp_path / "run").exists()

    os.kill(first.pid, signal.SIGKILL)  # the main process only: its workers must not keep the lock
    first.wait()
    try:
        run_cli("build-aug", *args, "--out", str(out), check=True)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # orphaned workers, if any
    assert not (out / BUILD_DIR).exists()
    assert_same_store(out, reference)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is pid (Linux's /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def is_running(pid: int) -> bool:
    """Whether pid is a live process: not gone, and not a zombie (ended, waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_the_pool_workers_end_quietly_with_a_build_killed_by_kill_9(resumable_case, tmp_path):
    """kill -9 of build-aug alone (an OOM killer picks one process): its workers end at once, printing nothing,
    instead of finishing their chunks and dying on a BrokenPipeError traceback when they hand them to nobody."""
    args, _ = resumable_case
    first = start_build([*args, "--out", str(tmp_path / "s.zarr")], start_new_session=True)
    try:
        wait_for_chunks(tmp_path / "s.zarr", 2, first)
        workers = children_of(first.pid)
        assert len(workers) >= 2
        os.kill(first.pid, signal.SIGKILL)
        # stderr ends once every process holding it has ended: the workers too
        _, stderr = first.communicate(timeout=30)
        assert "Traceback" not in stderr and "Error" not in stderr, stderr
        assert not [pid for pid in workers if is_running(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # orphaned workers, if any


# -- corrupted stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> Path:
    """Built once for the module; each test damages its own copy (small_store)."""
    root = tmp_path_factory.mktemp("robustness-store")
    images = write_image_folder(root / "images", {"cat": 10, "dog": 10, "emu": 10})  # as the image_folder fixture
    out = root / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--copies",
        "2",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--quiet",
        "--out",
        str(out),
        check=True,
    )
    verified = run_cli("inspect-aug", "--store", str(out), "--verify", check=True)
    assert "all 10 image chunks" in verified.stdout  # train: 24 sources x 3 rows = 9 chunks of 8; val: 6 rows, 1 chunk
    return out


@pytest.fixture
def small_store(built_store, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    shutil.copytree(built_store, out)
    return out


def chunk_file(store: Path, split: str, chunk: int) -> Path:
    return store / split / "images" / "c" / str(chunk) / "0" / "0" / "0"


def edit_attrs(store: Path, **changes) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, message",
    [
        ("delete", "is missing"),
        ("truncate", "has 3,000 bytes, not 6,144"),
    ],
)
def test_missing_or_truncated_chunks_are_refused_by_every_reader(damage, message, small_store, tmp_path):
    victim = chunk_file(small_store, "train", 3)
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:3000])
    for args in (
        ["inspect-aug", "--store", str(small_store)],
        ["inspect-aug", "--store", str(small_store), "--verify"],
        ["train", "--store", str(small_store), "--epochs", "1", "--out", str(tmp_path / "run")],
    ):
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert str(victim) in result.stderr and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_verify_finds_a_flipped_byte_that_only_checksums_can_see(small_store):
    victim = chunk_file(small_store, "val", 0)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert run_cli("inspect-aug", "--store", str(small_store)).returncode == 0  # same size: the cheap check passes
    result = run_cli("inspect-aug", "--store", str(small_store), "--verify")
    assert result.returncode == 1
    assert f"val chunk 0 ({victim}) does not match its checksum from the build" in result.stderr


def test_edited_attributes_are_detected(small_store, tmp_path):
    edit_attrs(small_store, image_shape=[32, 32, 3])
    result = run_cli("train", "--store", str(small_store), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert (
        result.returncode == 1
        and "train/images holds (16, 16, 3) images but the attributes say (32, 32, 3)" in result.stderr
    )
    edit_attrs(small_store, image_shape=[16, 16, 3], class_names=["cat", "dog"])
    verify = run_cli("inspect-aug", "--store", str(small_store), "--verify")
    assert verify.returncode == 1 and "labels go up to 2, but the attributes name 2 classes" in verify.stderr
    edit_attrs(small_store, format_version=7)
    newer = run_cli("inspect-aug", "--store", str(small_store))
    assert (
        newer.returncode == 1 and "format version 7, newer than this augzarr reads (2): upgrade augzarr" in newer.stderr
    )


# -- the bad image corpus (test_bad_images.py) runs its builds as a user without root powers ---------------


def run_without_root_powers(*args: str) -> subprocess.CompletedProcess:
    """Run a console script as a user would; as root, without the power to read any file
    (setpriv drops it), so a file without read permission is unreadable, as for everyone else."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file permissions cannot be tested")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*prefix, str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )


# -- a full disk (the crash campaign is in test_campaigns.py) ------------------------------------------


def test_training_that_fills_the_disk_stops_with_a_message_and_resumes(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", {"a": 12, "b": 12}, size=16)
    store = tmp_path / "s.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(folder),
        "--copies",
        "1",
        "--preview",
        "0",
        "--quiet",
        "--out",
        str(store),
        check=True,
    )
    run_dir = tmp_path / "run"
    command = ["--store", str(store), "--epochs", "2", "--batch-size", "8", "--model", "shallow", "--out", str(run_dir)]
    limited = subprocess.run(
        [str(BIN / "train"), *command], capture_output=True, text=True, preexec_fn=set_file_size_limit(1 << 20)
    )
    assert limited.returncode == 1, limited.stderr
    last = limited.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error: no space left writing")
    assert last.endswith(
        "then run the same command again (or train --resume --out RUN_DIR) to continue from the last checkpoint"
    )
    assert "Traceback" not in limited.stderr
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    resumed = run_cli("train", *command, check=True)  # the same command, once space is free
    assert "resuming" in resumed.stdout and "Test accuracy" in resumed.stdout
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


# -- bad options ----------------------------------------------------------------------------------------

BUILD_BAD = [  # option, value, what the one line says
    ("--copies", "-3", "--copies must be in [0, 10000]"),
    ("--copies", "99999999", "--copies must be in [0, 10000]"),
    ("--copies", "five", "'--copies'"),
    ("--val-fraction", "1", "--val-fraction must be in [0, 1)"),
    ("--val-fraction", "-0.1", "--val-fraction must be in [0, 1)"),
    ("--val-fraction", "nan", "--val-fraction must be in [0, 1)"),
    ("--val-fraction", "lots", "'--val-fraction'"),
    ("--chunk-size", "0", "--chunk-size must be at least 1"),
    ("--chunk-size", "-1", "--chunk-size must be at least 1"),
    ("--chunk-size", "10000000", "MiB chunks; use at most"),
    ("--chunk-size", "1e3", "'--chunk-size'"),
    ("--image-size", "0", "--image-size must be in [1, 4096]"),
    ("--image-size", "99999", "--image-size must be in [1, 4096]"),
    ("--image-size", "big", "--image-size must be N (NxN) or HxW"),
    ("--image-size", "32x", "--image-size must be N (NxN) or HxW"),
    ("--fit", "squash", "--fit must be one of crop, pad, stretch"),
    ("--limit", "0", "--limit must be at least 1"),
    ("--limit", "-5", "--limit must be at least 1"),
    ("--limit", "x", "'--limit'"),
    ("--seed", "-1", "--seed must be in [0, 2**63)"),
    ("--seed", str(2**64), "--seed must be in [0, 2**63)"),
    ("--seed", "abc", "'--seed'"),
    ("--workers", "0", "--workers must be in [1, "),
    ("--workers", "100000", "--workers must be in [1, "),
    ("--workers", "two", "'--workers'"),
    ("--preview", "-1", "--preview must be in [0, 256]"),
    ("--preview", "1000000", "--preview must be in [0, 256]"),
    ("--preview", "some", "'--preview'"),
    ("--policy", "sharpen-it", "--policy sharpen-it: unknown policy"),
]


@pytest.mark.parametrize("option, value, message", BUILD_BAD)
def test_bad_build_options_give_one_line_naming_the_option(option, value, message, image_folder, tmp_path):
    result = run_cli(
        "build-aug", "--source", str(image_folder), "--out", str(tmp_path / "s.zarr"), "--quiet", option, value
    )
    assert result.returncode == 2, result.stdout  # every bad option: typer's usage code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("build-aug: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_store_too_big_for_the_disk_is_refused_up_front(image_folder, tmp_path):
    # 30 images at 4096x4096 (48 MiB a row) x 10,001 rows each: about 14 TiB, more than this disk
    result = run_cli(
        "build-aug",
        "--source",
        str(image_folder),
        "--image-size",
        "4096",
        "--copies",
        "10000",
        "--out",
        str(tmp_path / "s.zarr"),
        "--quiet",
    )
    assert result.returncode == 1 and "GiB are free for --out" in result.stderr and "fewer --copies" in result.stderr
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "make, option, message",
    [
        (lambda d: (d / "p.json").write_text("{not json"), "--policy", "not a valid albumentations json pipeline"),
        (
            lambda d: (d / "p.yaml").write_text("transform: [unclosed"),
            "--policy",
            "not a valid albumentations yaml pipeline",
        ),
        (
            lambda d: (d / "p.json").write_text(
                '{"__version__": "2.0.8", "transform": {"__class_fullname__": "Sharpenify", "p": 1}}'
            ),
            "--policy",
            "not a valid albumentations json pipeline",
        ),
        (lambda d: (d / "p.json").mkdir(), "--policy", "is a folder"),
        (lambda d: (d / "prev").write_text("a file"), "--preview-dir", "is a file"),
        (lambda d: (d / "out").write_text("a file"), "--out", "is a file"),
        (
            lambda d: (d / "src.txt").write_text("a file"),
            "--source",
            "a file must be the official cifar-10-python.tar.gz",
        ),
    ],
)
def test_files_and_folders_in_the_wrong_place(make, option, message, image_folder, tmp_path):
    make(tmp_path)
    target = {
        "--policy": next(tmp_path.glob("p.*"), None),
        "--preview-dir": tmp_path / "prev",
        "--out": tmp_path / "out",
        "--source": tmp_path / "src.txt",
    }[option]
    args = {"--source": str(image_folder), "--out": str(tmp_path / "s.zarr"), option: str(target)}
    result = run_cli("build-aug", *[x for pair in args.items() for x in pair], "--quiet")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and option in result.stderr, result.stderr


TRAIN_BAD = [
    ("--epochs", "0", "--epochs must be in [1, 100000]"),
    ("--epochs", "-2", "--epochs must be in [1, 100000]"),
    ("--epochs", "10000000", "--epochs must be in [1, 100000]"),
    ("--epochs", "many", "'--epochs'"),
    ("--batch-size", "0", "--batch-size must be in [1, 65536]"),
    ("--batch-size", "100000000", "--batch-size must be in [1, 65536]"),
    ("--batch-size", "big", "'--batch-size'"),
    ("--learning-rate", "0", "--learning-rate must be in (0, 10.0]"),
    ("--learning-rate", "-0.1", "--learning-rate must be in (0, 10.0]"),
    ("--learning-rate", "1e9", "--learning-rate must be in (0, 10.0]"),
    ("--learning-rate", "fast", "'--learning-rate'"),
    ("--seed", "-1", "--seed must be in [0, 2**32)"),
    ("--seed", str(2**40), "--seed must be in [0, 2**32)"),
    ("--buffer-chunks", "0", "--buffer-chunks must be at least 1"),
    ("--buffer-chunks", "100000000", "per window of this store; use at most"),
    ("--model", "resnet", "--model must be one of deep, shallow"),
    ("--optimizer", "lion", "--optimizer must be one of rmsprop, adam, sgd"),
    ("--lr-schedule", "step", "--lr-schedule must be one of constant, cosine"),
]


def test_bad_train_and_evaluate_options_give_one_line_naming_the_option(small_store, tmp_path):
    for option, value, message in TRAIN_BAD:
        result = run_cli("train", "--store", str(small_store), "--out", str(tmp_path / "run"), option, value)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (option, value, result.stderr)
        assert not (tmp_path / "run").exists()
    result = run_cli("evaluate", "--model", str(tmp_path), "--store", str(small_store), "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size must be in [1, 65536]" in result.stderr
    result = run_cli("evaluate", "--model", str(small_store), "--store", str(small_store))
    assert result.returncode == 1 and "not a train run folder" in result.stderr
