"""Issue #11 points 4-6: stores on object storage, against a real S3-compatible server (moto's server
mode, started here on 127.0.0.1), through the commands as a user runs them. No mock of any client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, run_cli, write_image_folder
from faultproxy import FaultProxy
from s3server import MotoServer, endpoint_env

LEASE_SECONDS = "2"  # a killed build's lease expires this soon here (60 s by default)


@pytest.fixture(scope="module")
def server():
    with MotoServer() as moto:
        yield moto


@pytest.fixture
def s3(server, monkeypatch) -> dict:
    """A fresh bucket, and the environment that reaches it (set here too, for the checks made in this process)."""
    bucket = f"augzarr-{uuid.uuid4().hex[:12]}"
    server.make_bucket(bucket)
    env = {**server.env, "AUGZARR_LEASE_SECONDS": LEASE_SECONDS}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {"env": env, "bucket": bucket, "url": f"s3://{bucket}/datasets/aug.zarr"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(
        tmp_path_factory.mktemp("s3-images") / "images", {"ant": 12, "bee": 10, "cow": 8}, size=16
    )


@pytest.fixture(scope="module")
def local_store(images, tmp_path_factory) -> Path:
    """The local build of build_args: what a build to S3 must equal. Read it, never change it."""
    local = tmp_path_factory.mktemp("s3-local") / "local.zarr"
    run_cli(*build_args(images, str(local)), check=True)
    return local


def build_args(images: Path, out: str, *extra: str) -> list[str]:
    return [
        "build-aug",
        "--source",
        str(images),
        "--out",
        out,
        "--copies",
        "2",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--workers",
        "2",
        *extra,
    ]


def long_build_args(images: Path, out: str) -> list[str]:
    """A build of 696 one-row chunks: about 1,400 requests, so it is still running when the test steps in."""
    args = build_args(images, out)
    args[args.index("--copies") + 1] = "6"
    args[args.index("--chunk-size") + 1] = "1"
    return args


def objects(url: str) -> dict[str, bytes]:
    from augzarr.storage import open_storage

    storage = open_storage(url)
    return {key: storage.read(key) for key in storage.list()}


def without_build_time(metadata: bytes) -> dict:
    meta = json.loads(metadata)
    meta["attributes"].pop("built")  # when and how long: the one attribute that differs between two builds
    return meta


def assert_same_objects(url: str, local: Path) -> None:
    """Every object of the S3 store equals the local store's file of the same key, byte for byte."""
    remote = objects(url)
    files = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert sorted(remote) == sorted(files)
    assert without_build_time(remote.pop("zarr.json")) == without_build_time(files.pop("zarr.json"))
    assert [k for k in files if remote[k] != files[k]] == []


def assert_one_line(result, *expected: str) -> str:
    line = result.stderr.strip()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and len(line.splitlines()) == 1, result.stderr
    for text in expected:
        assert text in line, (text, line)
    return line


def test_a_build_to_s3_is_the_local_build_byte_for_byte_and_reads_back(s3, images, local_store):
    local = local_store
    built = run_cli(*build_args(images, s3["url"]), env=s3["env"], check=True)
    assert built.stdout.startswith(f"built {s3['url']}: ")
    assert_same_objects(s3["url"], local)
    assert not any(
        key.startswith((".build/", ".lock")) for key in objects(s3["url"])
    )  # finished: no build state, no lease
    summary = run_cli("inspect-aug", "--store", s3["url"], "--json", env=s3["env"], check=True).stdout
    assert json.loads(summary)["path"] == s3["url"]
    verified = run_cli("inspect-aug", "--store", s3["url"], "--verify", env=s3["env"], check=True).stdout
    assert verified.startswith(f"verified {s3['url']}: all ")
    again = run_cli(*build_args(images, s3["url"]), env=s3["env"], check=True)
    assert "already complete with these arguments" in again.stdout


def test_train_and_evaluate_from_s3(s3, images, tmp_path):
    run_cli(*build_args(images, s3["url"]), env=s3["env"], check=True)
    run_dir = tmp_path / "run"
    trained = run_cli(
        "train",
        "--store",
        s3["url"],
        "--epochs",
        "1",
        "--model",
        "shallow",
        "--batch-size",
        "16",
        "--quiet",
        "--out",
        str(run_dir),
        env=s3["env"],
        check=True,
    )
    assert "Test accuracy:" in trained.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["store"] == s3["url"]
    evaluated = run_cli("evaluate", "--model", str(run_dir), "--store", s3["url"], env=s3["env"], check=True).stdout
    assert f"on {s3['url']} (val split)" in evaluated


def test_a_killed_build_s_lease_is_taken_over_at_once_on_its_machine_and_the_same_command_resumes(s3, server, tmp_path):
    import tempfile

    from augzarr.builder.build import SOURCE_PREFIX
    from augzarr.storage import open_storage
    from augzarr.storage.objectstore import LOCK_KEY

    def source_copies() -> set[Path]:  # this machine's decoded copies of a source, for object-store builds
        return set(Path(tempfile.gettempdir()).glob(f"{SOURCE_PREFIX}*"))

    before = source_copies()
    images = write_image_folder(tmp_path / "many", {"ant": 60, "bee": 60}, size=16)
    args = long_build_args(images, s3["url"])
    storage = open_storage(s3["url"])
    # the first build's chunks through a slow link, its lease renewals at once: it is still running, its lease
    # renewed, when the second command comes, however fast this machine (the other commands talk to the server)
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1])).start()
    proxy.delay, proxy.undelayed = 0.03, LOCK_KEY
    build = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        env={**os.environ, **s3["env"], "AWS_ENDPOINT_URL": proxy.url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(storage.list(".build/chunks/")) < 10:
        assert build.poll() is None and time.monotonic() < deadline, build.communicate()
        time.sleep(0.05)
    leased = time.monotonic()
    while time.monotonic() < leased + float(LEASE_SECONDS) + 1:  # past the lease's first term: renewed, not expired
        assert build.poll() is None, build.communicate()
        time.sleep(0.1)
    second = run_cli(*args, env=s3["env"])  # while the first runs: refused at once, naming it as running here
    assert_one_line(
        second,
        f"{s3['url']} is locked by the build of ",
        f":{build.pid} (running on this machine), which last renewed its lease",
        "unless renewed again",
    )
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    proxy.stop()
    done_before = len(storage.list(".build/chunks/"))
    assert storage.has(".lock") and not json.loads(storage.read("zarr.json"))["attributes"]["complete"]
    # its process is gone from this machine: no wait for the lease to expire
    resumed = run_cli(*args, env=s3["env"], check=True)
    assert "took over the lease of a build that stopped (" in resumed.stdout, resumed.stdout
    assert f":{build.pid}: no longer running on this machine)" in resumed.stdout, resumed.stdout
    assert resumed.stdout.splitlines()[-1].startswith(f"resumed {s3['url']}: 672 train, 24 val rows"), resumed.stdout
    computed = int(resumed.stdout.split("rows (")[1].split(" computed")[0].replace(",", ""))
    assert computed <= 672 + 24 - done_before  # only the chunks (of one row) the killed build had not committed
    assert (
        source_copies() == before
    )  # the killed build's copy of the decoded source removed by the next build, its own too
    local = tmp_path / "local.zarr"
    run_cli(*args[: args.index("--out") + 1], str(local), *args[args.index("--out") + 2 :], check=True)
    assert_same_objects(s3["url"], local)


def test_verify_finds_a_flipped_byte_in_an_object(s3, images):
    from augzarr.storage import open_storage

    run_cli(*build_args(images, s3["url"]), env=s3["env"], check=True)
    storage = open_storage(s3["url"])
    key = "train/images/c/2/0/0/0"
    data = bytearray(storage.read(key))
    data[100] ^= 0x01
    storage.write(key, bytes(data))
    # sizes are right, so a reader opens it; --verify reads every byte
    assert run_cli("inspect-aug", "--store", s3["url"], env=s3["env"]).returncode == 0
    verify = run_cli("inspect-aug", "--store", s3["url"], "--verify", env=s3["env"])
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    found, verdict = verify.stderr.strip().splitlines()
    assert found == f"damaged: train chunk 2 ({s3['url']}/{key}) does not match its checksum from the build"
    assert verdict.startswith(f"inspect-aug: error: store {s3['url']} failed verification (1 problem above)")


def test_transient_errors_are_retried_not_surfaced(s3, images, server, local_store):
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1])).start()
    try:
        env = {**s3["env"], "AWS_ENDPOINT_URL": proxy.url}
        proxy.mode, proxy.every = "503", 5  # every fifth request answers 503 SlowDown
        run_cli(*build_args(images, s3["url"]), env=env, check=True)
        slowdowns = proxy.faults
        proxy.mode, proxy.every, proxy.count = "drop", 7, 0  # every seventh connection dropped without an answer
        run_cli("inspect-aug", "--store", s3["url"], "--verify", env=env, check=True)
        assert slowdowns > 5 and proxy.faults > slowdowns
    finally:
        proxy.stop()
    assert_same_objects(s3["url"], local_store)


def test_a_lease_whose_create_answer_was_lost_is_recognised_as_ours(s3, images, server, local_store):
    """The server takes the conditional PUT of the lease but the answer never arrives; the client's retry
    then meets its own lease (412): the token inside tells it apart from another build's."""
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1])).start()
    try:
        proxy.mode, proxy.only, proxy.fail_next = "lose_response", ".lock", 1
        run_cli(*build_args(images, s3["url"]), env={**s3["env"], "AWS_ENDPOINT_URL": proxy.url}, check=True)
        assert [(method, status) for method, path, status in proxy.log if ".lock" in path][:2] == [
            ("PUT", 200),
            ("PUT", 412),
        ]
    finally:
        proxy.stop()
    assert_same_objects(s3["url"], local_store)


def test_the_server_going_away_mid_build_then_coming_back_resumes_to_the_same_store(s3, server, tmp_path):
    images = write_image_folder(tmp_path / "many", {"ant": 60, "bee": 60}, size=16)
    proxy = FaultProxy(int(server.url.rsplit(":", 1)[1])).start()
    env = {**s3["env"], "AWS_ENDPOINT_URL": proxy.url}
    args = long_build_args(images, s3["url"])
    from augzarr.storage import open_storage

    storage = open_storage(s3["url"])  # straight to the server, not through the proxy
    build = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(storage.list(".build/chunks/")) < 10:
            assert build.poll() is None and time.monotonic() < deadline, build.communicate()
            time.sleep(0.05)
        proxy.stop()  # the server is gone for the build
        _, stderr = build.communicate(timeout=300)
        assert build.returncode == 1
        assert "Traceback" not in stderr and "cannot reach the object store" in stderr.strip().splitlines()[-1], stderr
        proxy = FaultProxy(proxy.upstream_port, port=proxy.port).start()  # back, on the same address
        time.sleep(float(LEASE_SECONDS) + 0.5)  # the stopped build could not remove its lease
        resumed = run_cli(*args, env=env, check=True)
        assert resumed.stdout.splitlines()[-1].startswith(f"resumed {s3['url']}"), resumed.stdout
    finally:
        proxy.stop()
    local = tmp_path / "local.zarr"
    run_cli(*args[: args.index("--out") + 1], str(local), *args[args.index("--out") + 2 :], check=True)
    assert_same_objects(s3["url"], local)


def test_wrong_or_missing_credentials_and_a_missing_bucket_are_one_line(images, tmp_path):
    with MotoServer(auth=True) as moto:
        keys = moto.make_user()
        bucket = "augzarr-auth"
        from s3server import client

        client(moto.url, keys).create_bucket(Bucket=bucket)  # the last free request; from here on signatures count
        url = f"s3://{bucket}/aug.zarr"
        good = endpoint_env(moto.url, keys)
        run_cli(*build_args(images, url), env=good, check=True)
        wrong = {**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
        for command in (
            build_args(images, url),
            ["inspect-aug", "--store", url],
            ["train", "--store", url, "--epochs", "1"],
        ):
            assert_one_line(run_cli(*command, env=wrong), f"{url}: access denied", "AWS_SECRET_ACCESS_KEY")
        missing = {**good, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
        assert_one_line(
            run_cli("inspect-aug", "--store", url, env=missing), f"{url}: no S3 credentials: set AWS_ACCESS_KEY_ID"
        )
        no_bucket = "s3://augzarr-absent/aug.zarr"
        assert_one_line(run_cli(*build_args(images, no_bucket), env=good), "bucket 'augzarr-absent' does not exist")
        assert_one_line(
            run_cli("inspect-aug", "--store", no_bucket, env=good), "bucket 'augzarr-absent' does not exist"
        )


def lease_object(url: str, holder: dict, renewed_ago: float, expires_in: float) -> None:
    from augzarr.storage import open_storage

    now = time.time()
    owner = f"someone@{holder['host']}:{holder['pid']}" if holder else "someone@an-older-augzarr:1"
    lease = {
        "owner": owner,
        "build_id": "b",
        "token": "t",
        "renewed": now - renewed_ago,
        "expires": now + expires_in,
        "process": holder,
    }
    open_storage(url).write(".lock", json.dumps(lease).encode())


def take_lease(url: str) -> list[str]:
    """Take the store's lease and give it back; what the build would have said."""
    from augzarr.storage import open_storage

    said = []
    with open_storage(url).writer_lock("mine", say=said.append):
        pass
    return said


def test_a_held_lease_is_refused_saying_when_it_was_renewed_and_when_it_expires_not_right_now(s3):
    from augzarr.storage import LeaseHeld
    from augzarr.storage.objectstore import this_process

    elsewhere = {"host": "another-machine", "boot": "b", "pid_namespace": "pid:[1]", "pid": 4242, "started": "1"}
    lease_object(s3["url"], elsewhere, renewed_ago=5, expires_in=25)
    with pytest.raises(LeaseHeld) as refused:
        take_lease(s3["url"])
    message = str(refused.value)
    assert message.startswith(
        f"{s3['url']} is locked by the build of someone@another-machine:4242, which last renewed its lease "
    )
    assert re.search(
        r"its lease [56] s ago \(\d\d:\d\d:\d\d UTC\); the lease expires in 2[45] s \(\d\d:\d\d:\d\d UTC\) unless renewed",
        message,
    ), message
    assert "right now" not in message and "running on this machine" not in message
    lease_object(s3["url"], this_process(), renewed_ago=1, expires_in=59)  # this very process: running here
    with pytest.raises(LeaseHeld, match=r"\(running on this machine\), which last renewed its lease [12] s ago"):
        take_lease(s3["url"])
    # an expired lease of another machine: taken over, saying since when
    lease_object(s3["url"], elsewhere, renewed_ago=70, expires_in=-10)
    said = take_lease(s3["url"])
    assert len(said) == 1 and re.fullmatch(
        r"took over the lease of a build that stopped \(someone@another-machine:4242, expired 1[01] s ago\)", said[0]
    ), said


def test_a_lease_of_a_process_of_this_machine_that_stopped_is_taken_over_before_it_expires(s3):
    from augzarr.storage.objectstore import process_start, this_process

    finished = subprocess.Popen(["true"])
    finished.wait()  # gone, and reaped
    for holder in (
        {**this_process(), "pid": finished.pid, "started": "1"},
        {**this_process(), "started": str(int(process_start(os.getpid())) - 1)},
    ):  # this PID, now another process's
        lease_object(s3["url"], holder, renewed_ago=1, expires_in=59)
        said = take_lease(s3["url"])
        assert said == [
            f"took over the lease of a build that stopped (someone@{holder['host']}:{holder['pid']}: no longer running "
            "on this machine)"
        ], said
    # a lease from before the process was recorded: only its expiry frees it
    lease_object(s3["url"], None, renewed_ago=1, expires_in=59)
    from augzarr.storage import LeaseHeld

    with pytest.raises(LeaseHeld, match="expires in 5[89] s"):
        take_lease(s3["url"])


def without_credentials(home: Path) -> dict:
    """The environment with no object-store variable of any provider, and a home without gcloud's file."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GOOGLE_", "AZURE_", "GCE_"))},
        "HOME": str(home),
    }


@pytest.mark.parametrize(
    "url, extra, expected",
    [
        (
            "gs://bucket/a.zarr",
            {},
            "gs://bucket/a.zarr: no Google Cloud Storage credentials: set GOOGLE_APPLICATION_CREDENTIALS",
        ),
        (
            "az://container/a.zarr",
            {},
            "az://container/a.zarr: no Azure Blob Storage account or credentials: set AZURE_STORAGE_ACCOUNT_NAME",
        ),
        (
            "az://container/a.zarr",
            {"AZURE_STORAGE_ACCOUNT_NAME": "acct"},
            "no Azure Blob Storage credentials: set AZURE_STORAGE_ACCOUNT_KEY",
        ),
        (
            "az://container/a.zarr",
            {"AZURE_STORAGE_ACCOUNT_KEY": "a2V5"},
            "no Azure Blob Storage account: set AZURE_STORAGE_ACCOUNT_NAME",
        ),
        ("s3://bucket/a.zarr", {}, "s3://bucket/a.zarr: no S3 credentials: set AWS_ACCESS_KEY_ID"),
    ],
)
def test_each_provider_without_credentials_names_its_own_variables_before_any_request(url, extra, expected, tmp_path):
    from augzarr.storage.objectstore import PROVIDERS

    if PROVIDERS[url.split(":")[0]].metadata_host():
        pytest.skip("a machine of this cloud: its metadata service may give credentials")
    own = {"gs": "GOOGLE_", "az": "AZURE_", "s3": "AWS_"}[url.split(":")[0]]
    for command in (["inspect-aug", "--store", url], ["build-aug", "--source", str(tmp_path), "--out", url]):
        # the timeout guards against a client waiting on a metadata service that is not there, as gs:// did for 28 s
        result = subprocess.run(
            [str(BIN / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**without_credentials(tmp_path), **extra},
        )
        line = assert_one_line(result, expected)
        assert result.returncode == 1 and all(
            other not in line for other in ("AWS_", "GOOGLE_", "AZURE_") if other != own
        ), line


def test_urls_the_tool_cannot_use_are_one_line(s3, images, tmp_path):
    assert_one_line(run_cli("inspect-aug", "--store", "ftp://host/aug.zarr"), "unknown storage scheme ftp://", "s3://")
    assert_one_line(run_cli(*build_args(images, f"s3://{s3['bucket']}"), env=s3["env"]), "give a bucket and a path")
    assert_one_line(
        run_cli("inspect-aug", "--store", f"s3://{s3['bucket']}/nothing.zarr", env=s3["env"]), "does not exist"
    )
    # without the s3 extra installed
    hidden = "import sys; sys.modules['obstore'] = None; from augzarr.builder.cli import main_inspect; main_inspect()"
    result = subprocess.run(
        [str(BIN / "python"), "-c", hidden, "--store", s3["url"]],
        capture_output=True,
        text=True,
        env={**os.environ, **s3["env"]},
    )
    assert_one_line(result, "pip install 'augzarr[s3]'")


def test_file_urls_are_local_stores_written_atomically(images, local_store, tmp_path):
    from augzarr.storage import open_storage
    from augzarr.storage.local import LocalStorage

    out = tmp_path / "by url.zarr"
    assert isinstance(open_storage(out.as_uri()), LocalStorage)  # not zarr's fsspec route, which writes in place
    run_cli(*build_args(images, out.as_uri()), check=True)
    run_cli("inspect-aug", "--store", str(out), "--verify", check=True)
    reference = local_store  # the same arguments to a plain path
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert files == {p.relative_to(reference).as_posix() for p in reference.rglob("*")}


def test_the_tensorflow_reader_leaves_an_object_store_to_the_stream(s3, images):
    from augzarr.store_format import open_store
    from augzarr.trainer.tf_reader import store_dataset

    run_cli(*build_args(images, s3["url"]), env=s3["env"], check=True)
    assert store_dataset(open_store(s3["url"]), "train", 8, True) is None  # it reads local chunk files only


def test_a_coded_build_to_s3_is_the_local_build_and_streams_and_verifies(s3, images, tmp_path):
    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream

    local = tmp_path / "local.zarr"
    run_cli(*build_args(images, str(local), "--codec", "webp-lossless"), check=True)
    run_cli(*build_args(images, s3["url"], "--codec", "webp-lossless"), env=s3["env"], check=True)
    assert_same_objects(s3["url"], local)
    verified = run_cli("inspect-aug", "--store", s3["url"], "--verify", env=s3["env"], check=True)
    assert verified.stdout.startswith(f"verified {s3['url']}")
    remote = StoreStream(open_store(s3["url"]), "train", 7, shuffle=True, seed=2, buffer_chunks=2)
    here = StoreStream(open_store(local), "train", 7, shuffle=True, seed=2, buffer_chunks=2)
    for i in range(remote.batches_per_epoch + 1):
        assert all(np.array_equal(a, b) for a, b in zip(remote[i], here[i])), i
    remote.close()
    here.close()
