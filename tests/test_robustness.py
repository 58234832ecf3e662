"""The robustness campaign's cases (issue #4): concurrent misuse, corrupted stores, bad images, bad options."""

from __future__ import annotations

import os
import signal

from builder.store import BUILD_DIR
from conftest import assert_same_store, run_cli
from test_build import start_build, wait_for_chunks


def test_a_second_build_into_the_same_store_refuses_and_the_lock_dies_with_the_first(resumable_case, tmp_path):
    args, reference = resumable_case
    out = tmp_path / "s.zarr"
    first = start_build([*args, "--out", str(out)], start_new_session=True)
    wait_for_chunks(out, 5, first)
    os.killpg(first.pid, signal.SIGSTOP)  # hold the first build mid-way (a suspended laptop), lock and all
    second = run_cli("build-aug", *args, "--out", str(out))
    assert second.returncode == 1
    assert second.stderr.strip() == f"build-aug: error: another build-aug is writing {out} right now: wait for it to finish, or stop it, then run this again"
    assert first.poll() is None  # the first build is untouched

    train = run_cli("train", "--store", str(out), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert train.returncode == 1 and "incomplete" in train.stderr and not (tmp_path / "run").exists()

    os.kill(first.pid, signal.SIGKILL)  # the main process only: its workers must not keep the lock
    first.wait()
    try:
        run_cli("build-aug", *args, "--out", str(out), check=True)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # orphaned workers, if any
    assert not (out / BUILD_DIR).exists()
    assert_same_store(out, reference)
