"""Issue #11: the stream from an object store (its window's chunks fetched concurrently, each into its
place) serves the very batches of the stream from a local copy of the same build, in the same order:
a chunk put in the wrong place would still give every row once, so test_object_storage's check alone
would not see it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli, write_image_folder
from s3server import MotoServer


@pytest.fixture
def s3(monkeypatch):
    with MotoServer() as moto:
        moto.make_bucket("augzarr-order")
        for key, value in moto.env.items():
            monkeypatch.setenv(key, value)
        yield moto


def test_the_stream_from_s3_serves_the_local_stream_batches_in_order(s3, tmp_path):
    from augzarr.store_format import open_store
    from augzarr.trainer.stream import StoreStream

    images = write_image_folder(tmp_path / "images", {"ant": 12, "bee": 10, "cow": 8}, size=8)
    args = ["--source", str(images), "--copies", "2", "--chunk-size", "8", "--preview", "0", "--val-fraction", "0"]
    url, local = "s3://augzarr-order/aug.zarr", tmp_path / "aug.zarr"
    run_cli("build-aug", *args, "--out", url, env=s3.env, check=True)
    run_cli("build-aug", *args, "--out", str(local), check=True)
    for shuffle in (True, False):
        remote = StoreStream(open_store(url), "train", batch_size=7, shuffle=shuffle, seed=4, buffer_chunks=2)
        near = StoreStream(open_store(local), "train", batch_size=7, shuffle=shuffle, seed=4, buffer_chunks=2)
        epochs = 2 if shuffle else 1  # 90 rows: windows of 16 rows, batches that straddle them
        try:
            for i in range(epochs * remote.batches_per_epoch):
                x, y = remote[i]
                x_local, y_local = near[i]
                assert np.array_equal(x, x_local) and np.array_equal(y, y_local), (shuffle, i)
        finally:
            remote.close()
            near.close()
