"""Issue #13 point 1: build-aug --scheduler runs the chunk tasks on a real Dask cluster (started here);
the store is byte for byte the local build's, whatever the workers and threads per worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, write_image_folder


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    # two threads per worker: each thread must keep its own pipeline state, or the bytes would differ
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("cluster") / "images", {"ant": 20, "bee": 16, "cow": 12}, size=16)


def build(images: Path, out: Path, *extra: str, env: dict | None = None):
    return run_cli("build-aug", "--source", str(images), "--out", str(out), "--copies", "3", "--chunk-size", "8", "--preview", "0",
                   *extra, env=env, check=True)


def files(store: Path) -> dict[str, bytes]:
    import json

    found = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    meta = json.loads(found.pop("zarr.json"))
    meta["attributes"].pop("built")  # when it finished: the one difference between two builds
    return {**found, "zarr.json": json.dumps(meta, sort_keys=True).encode()}


def test_a_cluster_build_is_the_local_build_byte_for_byte(cluster, images, tmp_path):
    local = tmp_path / "local.zarr"
    build(images, local, "--workers", "1")
    on_cluster = tmp_path / "cluster.zarr"
    built = build(images, on_cluster, "--scheduler", cluster)
    assert built.stdout.startswith(f"built {on_cluster}: ")
    assert files(on_cluster) == files(local)
    from_env = tmp_path / "env.zarr"  # Dask's own variable names the scheduler as well
    build(images, from_env, env={"DASK_SCHEDULER_ADDRESS": cluster})
    assert files(from_env) == files(local)


def test_scheduler_local_starts_a_cluster_and_says_where_its_dashboard_is(images, tmp_path):
    out = tmp_path / "local-cluster.zarr"
    built = build(images, out, "--scheduler", "local", "--workers", "2")
    assert "started a local Dask cluster of 2 workers; dashboard: http://" in built.stdout
    reference = tmp_path / "reference.zarr"
    build(images, reference, "--workers", "2")
    assert files(out) == files(reference)


def test_an_unreachable_scheduler_is_one_line(images, tmp_path):
    result = run_cli("build-aug", "--source", str(images), "--out", str(tmp_path / "s.zarr"), "--preview", "0",
                     "--scheduler", "tcp://127.0.0.1:9", "--quiet")
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert line.startswith("build-aug: error: --scheduler tcp://127.0.0.1:9: cannot reach the Dask scheduler")


def test_a_worker_with_other_package_versions_is_refused_naming_it(images, tmp_path):
    """A real `dask scheduler` and `dask worker` pair, the worker seeing zarr's metadata at another version."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distributed import Client

    fake = tmp_path / "fake-metadata" / "zarr-2.0.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: zarr\nVersion: 2.0.0\n")
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    common = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(scheduler_file)], **common)
    worker = None
    try:
        while not scheduler_file.is_file():
            assert scheduler.poll() is None and time.sleep(0.1) is None
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                   "--no-dashboard"], env={**os.environ, "PYTHONPATH": str(fake.parent)}, **common)
        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            address = client.scheduler.address
        result = run_cli("build-aug", "--source", str(images), "--out", str(tmp_path / "s.zarr"), "--preview", "0", "--quiet",
                         "--scheduler", address)
        line = result.stderr.strip()
        assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
        assert "has zarr 2.0.0, this client 3." in line and "install the same versions on every worker" in line
        assert line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:")
    finally:
        for process in (worker, scheduler):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
