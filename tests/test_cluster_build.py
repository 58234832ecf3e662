"""Issue #13 point 1: build-aug --scheduler runs the chunk tasks on a real Dask cluster (started here);
the store is byte for byte the local build's, whatever the workers and threads per worker."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
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
    return run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "3",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        *extra,
        env=env,
        check=True,
    )


def files(store: Path) -> dict[str, bytes]:
    found = {p.relative_to(store).as_posix(): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    meta = json.loads(found.pop("zarr.json"))
    meta["attributes"].pop("built")  # when it finished: the one difference between two builds
    return {**found, "zarr.json": json.dumps(meta, sort_keys=True).encode()}


def fetched_copies() -> set[Path]:
    import tempfile

    from augzarr.builder.staging import FETCHED_PREFIX

    return set(Path(tempfile.gettempdir()).glob(f"{FETCHED_PREFIX}*"))


def test_a_cluster_build_is_the_local_build_byte_for_byte(cluster, images, tmp_path):
    from augzarr.builder.staging import fetched_folder

    local = tmp_path / "local.zarr"
    build(images, local, "--workers", "1")
    stale = fetched_folder("a killed build's store", "0")  # a machine's copy of the source that a killed build left
    stale.mkdir(exist_ok=True)
    (stale / ".users").touch()
    before = fetched_copies()
    on_cluster = tmp_path / "cluster.zarr"
    built = build(images, on_cluster, "--scheduler", cluster)
    assert built.stdout.startswith(f"built {on_cluster}: ")
    assert files(on_cluster) == files(local)
    # the workers' copies of the source are gone when the build is: theirs, and the one left by the killed build
    assert fetched_copies() == before - {stale}
    from_env = tmp_path / "env.zarr"  # Dask's own variable names the scheduler as well
    build(images, from_env, env={"DASK_SCHEDULER_ADDRESS": cluster})
    assert files(from_env) == files(local)


def test_a_source_with_a_test_split_builds_on_the_cluster_as_here(cluster, tmp_path):
    """Two staged splits: each worker fetches both (a worker once kept the first split's folder only)."""
    from conftest import assert_same_store, write_cifar_archive

    archive = tmp_path / "cifar-10-python.tar.gz"
    write_cifar_archive(archive, n_batches=1, per_batch=12, n_test=6)
    args = ["build-aug", "--source", str(archive), "--copies", "2", "--chunk-size", "4", "--preview", "0", "--quiet"]
    run_cli(*args, "--workers", "1", "--out", str(tmp_path / "local.zarr"), check=True)
    run_cli(*args, "--scheduler", cluster, "--out", str(tmp_path / "cluster.zarr"), check=True)
    assert_same_store(tmp_path / "local.zarr", tmp_path / "cluster.zarr")


def test_scheduler_local_starts_a_cluster_and_says_where_its_dashboard_is(images, tmp_path):
    out = tmp_path / "local-cluster.zarr"
    built = build(images, out, "--scheduler", "local", "--workers", "2")
    assert "started a local Dask cluster of 2 workers; dashboard: http://" in built.stdout
    reference = tmp_path / "reference.zarr"
    build(images, reference, "--workers", "2")
    assert files(out) == files(reference)


def test_an_unreachable_scheduler_is_one_line_naming_where_its_address_came_from_and_leaves_no_store(images, tmp_path):
    """Refused before the store is claimed: the folder is not even created. The two builds wait out the connection
    timeout side by side."""
    import subprocess

    from conftest import BIN

    unreachable = "tcp://127.0.0.1:9"
    cases = {
        "--scheduler": (["--scheduler", unreachable], {}),
        "AUGZARR_SCHEDULER": ([], {"AUGZARR_SCHEDULER": unreachable}),
    }
    clean = {k: v for k, v in os.environ.items() if k not in ("AUGZARR_SCHEDULER", "DASK_SCHEDULER_ADDRESS")}
    processes = {}
    for named, (option, variables) in cases.items():
        command = [
            str(BIN / "build-aug"),
            "--source",
            str(images),
            "--out",
            str(tmp_path / named.strip("-") / "s.zarr"),
            "--preview",
            "0",
            "--quiet",
            *option,
        ]
        processes[named] = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean, **variables}
        )
    for named, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        line = stderr.strip()
        assert process.returncode == 1 and len(line.splitlines()) == 1 and "Traceback" not in stderr, stderr
        shown = f"--scheduler {unreachable}" if named == "--scheduler" else f"{named}={unreachable}"
        assert line.startswith(f"build-aug: error: {shown}: cannot reach the Dask scheduler"), line
        assert not (tmp_path / named.strip("-")).exists()  # no store, no folder: nothing was claimed


def test_a_scheduler_without_workers_is_one_line_naming_its_variable_and_leaves_no_store(images, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "stores" / "s.zarr"
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", dashboard_address=":0") as empty:
        result = run_cli(
            "build-aug",
            "--source",
            str(images),
            "--out",
            str(out),
            "--preview",
            "0",
            "--quiet",
            env={"DASK_SCHEDULER_ADDRESS": empty.scheduler_address, "AUGZARR_SCHEDULER": ""},
        )
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert line == (
        f"build-aug: error: DASK_SCHEDULER_ADDRESS={empty.scheduler_address}: the scheduler has no workers: "
        f"start some with `dask worker {empty.scheduler_address}`"
    )
    assert not (tmp_path / "stores").exists()


@contextmanager
def dask_pair(
    tmp_path: Path, worker_env: dict | None = None, worker_prefix: tuple[str, ...] = (), worker_cwd: Path | None = None
):
    """A real `dask scheduler` and one `dask worker` in their own processes; yields the scheduler's address.
    worker_prefix runs the worker under another command (unshare: its own view of the file system);
    worker_cwd is the worker's working folder (the test's own when None)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distributed import Client

    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    common = {"start_new_session": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(
        [
            str(bin_dir / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(scheduler_file),
        ],
        **common,
    )
    worker = None
    try:
        while not scheduler_file.is_file():
            assert scheduler.poll() is None and time.sleep(0.1) is None
        worker = subprocess.Popen(
            [
                *worker_prefix,
                str(bin_dir / "dask"),
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            env={**os.environ, **(worker_env or {})},
            cwd=worker_cwd,
            **common,
        )
        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            yield client.scheduler.address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)


def test_a_worker_with_other_package_versions_is_refused_naming_it(images, tmp_path):
    """The worker sees zarr's metadata at another version."""
    fake = tmp_path / "fake-metadata" / "zarr-2.0.0.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: zarr\nVersion: 2.0.0\n")
    out = tmp_path / "stores" / "s.zarr"
    with dask_pair(tmp_path, worker_env={"PYTHONPATH": str(fake.parent)}) as address:
        result = run_cli(
            "build-aug", "--source", str(images), "--out", str(out), "--preview", "0", "--quiet", "--scheduler", address
        )
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert "has zarr 2.0.0, this client 3." in line and "install the same versions on every worker" in line
    assert line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:")
    assert not (tmp_path / "stores").exists()  # refused before the store was claimed, or its folder made


DIFFERENT_MACHINE = """
# A worker whose machine computes other bytes (as another CPU's native library might): every chunk it
# computes has its first byte changed.
import augzarr.builder.worker as worker

computed = worker.compute_block


def compute_otherwise(state, task):
    block = computed(state, task)
    block.reshape(-1)[0] ^= 1
    return block


worker.compute_block = compute_otherwise
"""


def test_a_worker_computing_other_bytes_is_refused_by_the_canary_before_the_claim(images, tmp_path):
    """Even with --overwrite, the complete store there is left whole: the canary runs before the store is claimed."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DIFFERENT_MACHINE)
    out = tmp_path / "s.zarr"
    args = ["--source", str(images), "--out", str(out), "--copies", "1", "--preview", "0", "--quiet"]
    run_cli("build-aug", *args, "--workers", "1", check=True)
    complete = files(out)
    with dask_pair(tmp_path, worker_env={"PYTHONPATH": str(site)}) as address:
        result = run_cli("build-aug", *args, "--overwrite", "--scheduler", address)
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert (
        line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:")
        and "computes other bytes for a chunk than this client" in line
    )
    assert files(out) == complete


def hidden_from_the_worker(folder: Path) -> tuple[str, ...]:
    """A prefix that starts the worker in its own mount namespace with an empty folder over `folder`
    (a worker on a machine that does not mount the source); skips where namespaces are not allowed."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user and mount namespaces) to give a worker its own view of the files")
    return ("unshare", "-rm", "sh", "-c", f'mount -t tmpfs tmpfs "{folder}" && exec "$0" "$@"')


def test_the_workers_decode_the_source_where_they_can_read_it(cluster, images, tmp_path):
    from distributed import Client

    out = tmp_path / "decoded-there.zarr"
    with Client(cluster) as client:
        client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.task_prefixes.pop("augzarr-decode", None))
        build(images, out, "--scheduler", cluster)
        ran = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "augzarr-decode" in ran  # the decode tasks ran on the cluster, not in the client's own pool
    reference = tmp_path / "reference.zarr"
    build(images, reference, "--workers", "2")
    assert files(out) == files(reference)


def test_a_worker_that_cannot_read_the_source_gets_it_decoded_by_the_client(images, tmp_path):
    with dask_pair(tmp_path, worker_prefix=hidden_from_the_worker(images)) as address:
        out = tmp_path / "decoded-here.zarr"
        built = build(images, out, "--scheduler", address)
    assert (
        f"cannot read {images}/" in built.stdout
        and "decoding the source here and staging it in the store" in built.stdout
    )
    reference = tmp_path / "reference.zarr"
    build(images, reference, "--workers", "2")
    assert files(out) == files(reference)


def test_a_worker_that_sees_only_part_of_the_source_is_refused_naming_a_file(images, tmp_path):
    """Even under --skip-bad: a file the client reads and a worker cannot is a cluster fault, not a bad image."""
    out = tmp_path / "stores" / "s.zarr"
    with dask_pair(tmp_path, worker_prefix=hidden_from_the_worker(images / "cow")) as address:
        result = run_cli(
            "build-aug",
            "--source",
            str(images),
            "--out",
            str(out),
            "--copies",
            "1",
            "--preview",
            "0",
            "--quiet",
            "--skip-bad",
            "--scheduler",
            address,
        )
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert f"cannot use {images}/cow/" in line and "but this client can: mount the source at the same path" in line
    assert not (tmp_path / "stores").exists()  # the workers' decoding is checked before the store is claimed


def test_relative_paths_build_on_a_worker_whose_working_folder_is_another(images, tmp_path):
    """--out and --source relative to build-aug's working folder, a worker started elsewhere: the workers get
    absolute paths, so they decode into and commit to the store build-aug claimed."""
    import shutil

    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(images, here / "src")
    elsewhere.mkdir()
    args = ["build-aug", "--source", "src", "--copies", "2", "--chunk-size", "8", "--preview", "0", "--quiet"]
    with dask_pair(tmp_path, worker_cwd=elsewhere) as address:
        run_cli(*args, "--out", "d.zarr", "--scheduler", address, cwd=here, check=True)
    run_cli(*args, "--out", "reference.zarr", "--workers", "1", cwd=here, check=True)
    assert files(here / "d.zarr") == files(here / "reference.zarr")
    assert not list(elsewhere.iterdir())  # nothing written where the worker runs


def test_a_worker_that_cannot_see_the_store_is_refused_before_the_claim(images, tmp_path):
    """A worker on a machine without the store's folder (its own empty folder at that path) would stage the
    source and commit chunks into a store of its own."""
    stores = tmp_path / "stores"
    stores.mkdir()
    out = stores / "s.zarr"
    with dask_pair(tmp_path, worker_prefix=hidden_from_the_worker(stores)) as address:
        result = run_cli(
            "build-aug",
            "--source",
            str(images),
            "--out",
            str(out),
            "--copies",
            "1",
            "--preview",
            "0",
            "--quiet",
            "--scheduler",
            address,
        )
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:"), line
    assert line.endswith(
        f"cannot see --out {out}: use a path on storage the workers share (mounted at the same path), or object storage"
    )
    assert not list(stores.iterdir())


def test_a_worker_with_another_image_pixel_limit_is_refused_naming_the_variable(cluster, images, tmp_path):
    """CV_IO_MAX_IMAGE_PIXELS, set for build-aug, means nothing to workers started without it: an image this client
    decodes, a worker would refuse."""
    result = run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(tmp_path / "s.zarr"),
        "--preview",
        "0",
        "--quiet",
        "--scheduler",
        cluster,
        env={"CV_IO_MAX_IMAGE_PIXELS": str(1 << 30)},
    )
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:"), line
    assert line.endswith(
        f"decodes images of at most {1 << 27:,} pixels, this client {1 << 30:,}: set the same "
        "CV_IO_MAX_IMAGE_PIXELS for build-aug and every worker"
    )
    assert not (tmp_path / "s.zarr").exists()


def long_build(images: Path, out: Path, scheduler: str) -> list[str]:
    """A build of one-row chunks: hundreds of tasks, still running when the test steps in."""
    return [
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "6",
        "--chunk-size",
        "1",
        "--preview",
        "0",
        "--quiet",
        "--scheduler",
        scheduler,
    ]


def start(command: list[str]):
    import os
    import subprocess

    from conftest import BIN

    return subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
    )


def wait_for_markers(out: Path, process, count: int) -> None:
    import time

    deadline = time.monotonic() + 180
    while len(list((out / ".build" / "chunks").rglob("train.*"))) < count:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_a_worker_killed_mid_build_has_its_tasks_rerun_and_the_store_is_the_same(cluster, images, tmp_path):
    import os
    import signal

    from distributed import Client

    out = tmp_path / "killed-worker.zarr"
    build_process = start(long_build(images, out, cluster))
    wait_for_markers(out, build_process, 20)
    with Client(cluster) as client:
        pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # the nanny starts a new one; Dask reruns its tasks
    stdout, stderr = build_process.communicate(timeout=300)
    assert build_process.returncode == 0, stderr
    reference = tmp_path / "reference.zarr"
    run_cli(*long_build(images, reference, "")[:-2], "--workers", "2", check=True)
    assert files(out) == files(reference)


def test_the_client_killed_then_the_same_command_resumes_and_a_stopped_builds_task_cannot_write(
    cluster, images, tmp_path
):
    import os
    import signal
    import time

    from distributed import Client

    from augzarr.builder.tasks import ChunkTask, WorkerConfig
    from augzarr.builder.worker import StaleBuild, compute_chunk_on_cluster
    from augzarr.storage import open_storage
    from augzarr.store_format import open_group

    out = tmp_path / "killed-client.zarr"
    command = long_build(images, out, cluster)
    build_process = start(command)
    wait_for_markers(out, build_process, 20)
    os.killpg(build_process.pid, signal.SIGKILL)
    build_process.wait()
    time.sleep(3)  # the tasks that were running when their client died finish (the same bytes a resume would write)
    written = {int(p.name) for p in (out / "train" / "images" / "c").iterdir()}
    # a task of a build that is no longer the store's (as after --overwrite) refuses to write
    pending = next(c for c in range(1000) if c not in written)
    rows = open_group(open_storage(out))["train"]
    task = ChunkTask(
        "train",
        pending,
        pending,
        "train",
        rows["source_index"][pending : pending + 1],
        rows["copy_index"][pending : pending + 1],
    )
    config = WorkerConfig(
        str(out), "", json.loads((out / "zarr.json").read_text())["attributes"]["policy"], 0, "an-old-build"
    )
    with Client(cluster) as client:
        with pytest.raises(StaleBuild, match="is now another build's"):
            client.submit(compute_chunk_on_cluster, config, task, pure=False).result(timeout=60)
    assert not (out / "train" / "images" / "c" / str(pending)).exists() and not list(
        out.rglob(f".build/chunks/**/train.{pending}")
    )
    resumed = run_cli(*command, check=True)  # the same command: only the chunks without a marker
    assert resumed.returncode == 0
    reference = tmp_path / "reference.zarr"
    run_cli(*[str(reference) if a == str(out) else a for a in command[:-2]], "--workers", "2", check=True)
    assert files(out) == files(reference)


def test_an_unfinished_build_claimed_before_build_ids_existed_resumes_on_the_cluster(cluster, images, tmp_path):
    """A .build/build.json without a build id (an older augzarr's claim): the chunk tasks check the store's build id
    before they commit, and must read it as the build does ("", not a missing key taken for another build's)."""
    reference = tmp_path / "reference.zarr"
    build(images, reference, "--workers", "1")
    out = tmp_path / "old-claim.zarr"
    (out / ".build").mkdir(parents=True)
    identity = json.loads((reference / "zarr.json").read_text())["attributes"]["identity"]
    (out / ".build" / "build.json").write_text(json.dumps({"identity": identity, "source_hash": None}))
    result = run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "3",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--scheduler",
        cluster,
    )
    assert result.returncode == 0, result.stderr
    assert files(out) == files(reference)


def test_a_cluster_build_to_object_storage_stages_the_source_in_the_store(images, tmp_path, monkeypatch):
    """Workers need not see the client's disk: they read the decoded source from the store's build area."""
    from distributed import LocalCluster
    from s3server import MotoServer

    from augzarr.storage import open_storage

    with MotoServer() as moto:
        moto.make_bucket("augzarr-cluster")
        for key, value in moto.env.items():
            monkeypatch.setenv(key, value)  # the workers' credentials too: they write into the bucket
        url = "s3://augzarr-cluster/aug.zarr"
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as with_keys:
            built = build(images, url, "--scheduler", with_keys.scheduler_address, env=moto.env)
        assert built.stdout.startswith(f"built {url}: ")
        storage = open_storage(url)
        remote = {key: storage.read(key) for key in storage.list()}
    local = tmp_path / "local.zarr"
    build(images, local, "--workers", "1")
    expected = files(local)
    meta = json.loads(remote.pop("zarr.json"))
    meta["attributes"].pop("built")
    assert {**remote, "zarr.json": json.dumps(meta, sort_keys=True).encode()} == expected


def test_a_worker_without_the_object_stores_credentials_is_refused_before_the_claim(images, tmp_path):
    """build-aug's credentials are its own: a worker started without them cannot reach the store."""
    from s3server import MotoServer

    from augzarr.storage import open_storage

    with MotoServer() as moto:
        moto.make_bucket("augzarr-cluster")
        url = "s3://augzarr-cluster/aug.zarr"
        without = {name: "" for name in moto.env}
        with dask_pair(tmp_path, worker_env=without) as address:
            result = run_cli(
                "build-aug",
                "--source",
                str(images),
                "--out",
                url,
                "--copies",
                "1",
                "--preview",
                "0",
                "--quiet",
                "--scheduler",
                address,
                env=moto.env,
            )
        with pytest.MonkeyPatch.context() as patch:
            for key, value in moto.env.items():
                patch.setenv(key, value)
            left = open_storage(url).list()
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert line.startswith("build-aug: error: Dask worker tcp://127.0.0.1:"), line
    assert f"cannot reach --out {url} ({url}: no S3 credentials: set AWS_ACCESS_KEY_ID" in line, line
    assert line.endswith("give every worker the store's credentials and endpoint in its own environment")
    assert left == {}  # no claim, no lease, no probe


def test_a_coded_cluster_build_is_the_local_build_byte_for_byte(cluster, images, tmp_path):
    local = tmp_path / "local.zarr"
    build(images, local, "--workers", "1", "--codec", "jpeg:85")
    on_cluster = tmp_path / "cluster.zarr"
    build(images, on_cluster, "--scheduler", cluster, "--codec", "jpeg:85")
    assert json.loads((on_cluster / "zarr.json").read_text())["attributes"]["codec"]["spec"] == "jpeg:85"
    assert files(on_cluster) == files(local)


OTHER_ENCODER = """
import augzarr.codecs as codecs

encode, decode, versions = codecs.FORMATS["jpeg"]


def encode_otherwise(spec, image):
    data = bytearray(encode(spec, image))
    data[-3] ^= 1  # the same pixels in, other bytes out: an encoder library built otherwise
    return bytes(data)


codecs.FORMATS["jpeg"] = (encode_otherwise, decode, versions)
"""


def test_a_worker_whose_encoder_writes_other_bytes_is_refused_by_the_canary(images, tmp_path):
    """Its pixels are this client's: only the encoded bytes tell it apart."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(OTHER_ENCODER)
    out = tmp_path / "s.zarr"
    args = ["--source", str(images), "--out", str(out), "--copies", "1", "--preview", "0", "--quiet"]
    with dask_pair(tmp_path, worker_env={"PYTHONPATH": str(site)}) as address:
        result = run_cli("build-aug", *args, "--codec", "jpeg", "--scheduler", address)
    line = result.stderr.strip()
    assert result.returncode == 1 and len(line.splitlines()) == 1, result.stderr
    assert "computes other bytes for a chunk than this client" in line
    assert not out.exists()
