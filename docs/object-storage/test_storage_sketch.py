"""Tests of storage_sketch.py: the same contract on the local disk and on moto_server.

    venv/bin/python -m pytest -q test_storage_sketch.py
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import storage_sketch as ss
from faultproxy import FaultProxy
from s3env import MotoProcess, make_bucket


@pytest.fixture(scope="session")
def moto():
    # a separate process, like the tests and benchmarks; ThreadedMotoServer(port=0)
    # works too (see test_threaded_moto_server)
    m = MotoProcess().start()
    make_bucket("augzarr-test")
    yield m
    m.stop()


@pytest.fixture(params=["local", "file-url", "s3"])
def storage(request, tmp_path, moto):
    if request.param == "local":
        return ss.open_storage(tmp_path / "aug.zarr")
    if request.param == "file-url":
        return ss.open_storage(f"file://{tmp_path}/aug.zarr")
    return ss.open_storage(f"s3://augzarr-test/{request.node.name}/aug.zarr")


def test_scheme_registry(tmp_path, moto):
    assert type(ss.open_storage(tmp_path)) is ss.LocalStorage
    assert type(ss.open_storage(f"file://{tmp_path}")) is ss.LocalStorage  # never fsspec's in-place writer
    assert type(ss.open_storage("s3://augzarr-test/x")) is ss.ObjectStorage
    with pytest.raises(ss.StorageError, match="unsupported store URL scheme 'ftp'"):
        ss.open_storage("ftp://host/x")


def test_chunks_json_list_size_remove(storage):
    blob = os.urandom(1024 * 32 * 32 * 3)
    for c in range(3):
        storage.write_atomic(f"train/images/c/{c}/0/0/0", blob)
        storage.write_atomic(f".build/done/{c}", b"")
    storage.write_json("zarr.json", {"a": 1})
    assert storage.read("train/images/c/1/0/0/0") == blob
    assert storage.read_many([f"train/images/c/{c}/0/0/0" for c in range(3)]) == [blob] * 3
    assert storage.read_json("zarr.json") == {"a": 1}
    with pytest.raises(KeyError):
        storage.read("nope")
    assert sorted(storage.list(".build/done")) == [f".build/done/{c}" for c in range(3)]
    assert storage.size("train") == 3 * len(blob)
    storage.remove(".build")
    assert storage.list(".build") == {}
    storage.remove(".build")  # idempotent


def test_raw_chunks_are_zarr_chunks(storage):
    """The builder writes raw chunk bytes through the seam; zarr reads them back."""
    import zarr
    from zarr.codecs import BytesCodec

    g = zarr.open_group(storage.zarr_store(), mode="w")
    a = g.create_array("train/images", shape=(2048, 32, 32, 3), chunks=(1024, 32, 32, 3),
                       dtype="uint8", serializer=BytesCodec(), compressors=None)
    x = np.random.default_rng(1).integers(0, 256, a.shape, dtype=np.uint8)
    for c in range(2):
        storage.write_atomic(f"train/images/c/{c}/0/0/0", x[c * 1024:(c + 1) * 1024].tobytes())
    r = zarr.open_group(storage.zarr_store(read_only=True), mode="r")
    assert (r["train/images"][:] == x).all()


def test_lock_exclusive(storage):
    with storage.lock(".build/lease.json", "b1", ttl=30) as info:
        assert info.build_id == "b1"
        with pytest.raises(ss.LeaseHeld, match="being built by"):
            with storage.lock(".build/lease.json", "b2", ttl=30):
                pass
    with storage.lock(".build/lease.json", "b3", ttl=30):  # released -> free again
        pass


def test_lease_takeover_after_expiry(moto):
    st = ss.open_storage("s3://augzarr-test/takeover/aug.zarr")
    dead = ss.LeaseInfo("ghost@host:1", "old-build", "tok", time.time() - 1)
    st.write_atomic(".build/lease.json", json.dumps(ss.asdict(dead)).encode())
    seen = []
    with st.lock(".build/lease.json", "new", ttl=30, on_takeover=seen.append) as me:
        assert me.build_id == "new"
        assert st.read_json(".build/lease.json")["build_id"] == "new"
    assert seen and seen[0].build_id == "old-build"


def test_lease_renewal_keeps_it(moto):
    st = ss.open_storage("s3://augzarr-test/renew/aug.zarr")
    with st.lock(".build/lease.json", "b", ttl=1.5):
        time.sleep(2.5)  # > ttl: only renewals keep it from expiring
        with pytest.raises(ss.LeaseHeld):
            with st.lock(".build/lease.json", "other", ttl=1.5):
                pass


def test_lease_create_with_lost_response(moto):
    """The server applies the create, the response is lost, obstore retries, the retry gets
    412: the lease must still be ours (token check), not 'held by someone else'."""
    from datetime import timedelta

    px = FaultProxy(moto.port).start()
    try:
        os.environ["AWS_ENDPOINT_URL"], saved = px.url, os.environ["AWS_ENDPOINT_URL"]
        st = ss.open_storage("s3://augzarr-test/lost/aug.zarr")
        os.environ["AWS_ENDPOINT_URL"] = saved
        px.mode, px.fail_next = "lose_response", 1
        with st.lock(".build/lease.json", "b", ttl=30):
            pass
        assert px.faults == 1
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        px.stop()


def test_transient_503_and_drop_are_retried(moto):
    px = FaultProxy(moto.port).start()
    saved = os.environ["AWS_ENDPOINT_URL"]
    try:
        os.environ["AWS_ENDPOINT_URL"] = px.url
        st = ss.open_storage("s3://augzarr-test/transient/aug.zarr")
        for mode in ("503", "drop"):
            px.mode, px.fail_next = mode, 2
            st.write_atomic("k", b"v" * 100000)
            px.mode, px.fail_next = mode, 2
            assert st.read("k") == b"v" * 100000
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        px.stop()


def test_missing_bucket_one_line(moto):
    st = ss.open_storage("s3://no-such-bucket-x/aug.zarr")
    with pytest.raises(ss.StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        st.check()


def test_server_gone_one_line(moto, monkeypatch):
    from datetime import timedelta

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    st = ss.ObjectStorage("s3://augzarr-test/x", retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=5)})
    with pytest.raises(ss.StorageError, match="cannot reach the object store"):
        st.write_atomic("k", b"1")


def test_missing_credentials_one_line(monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(ss.StorageError, match="no credentials"):
        ss.open_storage("s3://augzarr-test/x")


def test_threaded_moto_server():
    """In-process alternative: port 0, data survives stop/start on the same port."""
    import boto3
    from moto.server import ThreadedMotoServer

    s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s.start()
    host, port = s.get_host_and_port()
    c = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    c.create_bucket(Bucket="augzarr-thr2")
    c.put_object(Bucket="augzarr-thr2", Key="k", Body=b"1")
    s.stop()
    s = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s.start()
    assert c.get_object(Bucket="augzarr-thr2", Key="k")["Body"].read() == b"1"
    s.stop()


def test_wrong_credentials_one_line(monkeypatch):
    """moto accepts any key unless INITIAL_NO_AUTH_ACTION_COUNT is set: then the first N
    requests are free (IAM user, key, policy, bucket) and every later one is checked."""
    import boto3

    saved = dict(os.environ)
    m = MotoProcess(env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"}).start()  # sets AWS_ENDPOINT_URL
    try:
        iam = boto3.client("iam")
        iam.create_user(UserName="b")
        k = iam.create_access_key(UserName="b")["AccessKey"]
        iam.put_user_policy(UserName="b", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        boto3.client("s3", aws_access_key_id=k["AccessKeyId"],
                     aws_secret_access_key=k["SecretAccessKey"]).create_bucket(Bucket="augzarr-auth")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", k["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", k["SecretAccessKey"])
        ss.open_storage("s3://augzarr-auth/ok").write_atomic("k", b"1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        st = ss.open_storage("s3://augzarr-auth/ok")
        for op in (st.check, lambda: st.write_atomic("k", b"1"), lambda: st.read("k")):
            with pytest.raises(ss.StorageError, match="access denied"):
                op()
    finally:
        m.stop()
        os.environ.clear()
        os.environ.update(saved)


def _put_in_worker(args):
    url, i = args
    ss.open_storage(url).write_atomic(f"w/{i}", b"x")
    return i


def test_workers_after_parent_used_obstore(moto):
    """obstore (tokio) is not fork-safe: once the parent has made a request, forked workers
    hang. forkserver (or spawn) workers are fine: the builder must not fork for object stores."""
    import multiprocessing as mp

    url = "s3://augzarr-test/workers/aug.zarr"
    ss.open_storage(url).write_atomic("parent", b"1")  # the parent's runtime is now running
    with mp.get_context("forkserver").Pool(2) as p:
        assert p.map_async(_put_in_worker, [(url, i) for i in range(4)]).get(30) == [0, 1, 2, 3]
    assert len(ss.open_storage(url).list("w")) == 4


def test_big_chunk_is_one_put(moto):
    """A 12 MiB chunk (64x64 images) must stay one PUT: obstore goes multipart above 5 MiB."""
    px = FaultProxy(moto.port).start()
    saved = os.environ["AWS_ENDPOINT_URL"]
    try:
        os.environ["AWS_ENDPOINT_URL"] = px.url
        st = ss.open_storage("s3://augzarr-test/big/aug.zarr")
        n0 = len(px.log)
        st.write_atomic("c/0", os.urandom(12 * 2**20))
        assert [(m, s) for m, _, s in px.log[n0:]] == [("PUT", 200)]
    finally:
        os.environ["AWS_ENDPOINT_URL"] = saved
        px.stop()
