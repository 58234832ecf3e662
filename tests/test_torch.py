"""Issue #25: augzarr.torch, a store's split for PyTorch's DataLoader: shared out over ranks and workers, every row
once an epoch, the order a function of (seed, epoch), resumable mid-epoch; the map-style rows; object storage;
no TensorFlow or Keras in the process; the missing extra's line; the example training script."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, run_cli, write_image_folder  # noqa: E402

from augzarr.plan import loader_order, worker_runs  # noqa: E402
from augzarr.store_format import open_store  # noqa: E402

BATCH = 7  # divides neither the 66 training rows nor the 8-row chunks: batches straddle windows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Read it, never change it: train 66 rows of 16x16 in 9 chunks of 8, the last holding 2, all different (the
    tests tell rows apart by their bytes: originals only, as a copy may repeat another); val 14 rows."""
    root = tmp_path_factory.mktemp("torch-store")
    write_image_folder(root / "images", {"ant": 27, "bee": 27, "cow": 26}, size=16)
    out = root / "store.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(root / "images"),
        "--out",
        str(out),
        "--copies",
        "0",
        "--chunk-size",
        "8",
        "--val-fraction",
        "0.175",
        "--preview",
        "0",
        "--workers",
        "1",
        check=True,
    )
    return out


def dataset(store, **kwargs):
    from augzarr.torch import StoreDataset

    return StoreDataset(str(store), "train", **{"batch_size": BATCH, "seed": 3, "buffer_chunks": 2, **kwargs})


def rows_of(batches) -> list[bytes]:
    return [bytes(row) for images, _ in batches for row in images.numpy()]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(p, q) for (x, p), (y, q) in zip(a, b))


def stamp_worker(image):
    """A transform that says where it ran: the image, then the worker's id and whether it ran in another process."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    mark = torch.tensor([info.id if info else 255, int(os.getpid() != MAIN_PID)], dtype=torch.uint8)
    return torch.cat([image.flatten(), mark])


MAIN_PID = os.getpid()


def test_the_split_rows_are_distinct(store):
    """The tests below tell rows apart by their bytes."""
    opened = open_store(store)
    images = opened.images("train")[:]
    assert len({bytes(row) for row in images}) == len(images) == 66 and opened.images("train").chunks[0] == 8
    assert opened.rows("val") == 14


def test_one_rank_serves_the_keras_streams_batches_in_its_order(store):
    """One plan for every consumer: without ranks or workers, the torch batches are StoreStream's, epoch after epoch."""
    from augzarr.trainer.stream import StoreStream

    stream = StoreStream(open_store(store), "train", BATCH, shuffle=True, seed=3, buffer_chunks=2)
    data = dataset(store)
    try:
        for epoch in (0, 1):
            data.set_epoch(epoch)
            got = list(data)
            assert len(got) == len(data) == stream.batches_per_epoch
            for i, (images, labels) in enumerate(got):
                x, y = stream[epoch * stream.batches_per_epoch + i]
                assert images.dtype == torch.uint8 and labels.dtype == torch.int64
                assert np.array_equal(images.numpy(), x) and np.array_equal(labels.numpy(), y), (epoch, i)
    finally:
        stream.close()


@pytest.mark.parametrize("batch_size", [BATCH, 5])
def test_two_ranks_by_two_workers_serve_every_row_once_an_epoch_with_equal_batch_counts(store, batch_size):
    """Each rank's 2 workers stamp the rows they built: ranks and workers disjoint, all rows once, equal counts."""
    everything = sorted(bytes(row) for row in open_store(store).images("train")[:])
    orders = []
    for epoch in (0, 1):
        seen, counts, order = [], [], []
        for rank in (0, 1):
            data = dataset(store, batch_size=batch_size, rank=rank, world_size=2, transform=stamp_worker, epoch=epoch)
            batches = list(data.loader(num_workers=2))
            counts.append(len(batches))
            assert len(batches) == len(data)
            by_worker = {0: [], 1: []}
            for images, _ in batches:
                workers, elsewhere = images[:, -2].unique().tolist(), images[:, -1].unique().tolist()
                assert len(workers) == 1 and elsewhere == [1], "a batch is built in one worker process"
                by_worker[workers[0]] += [bytes(row[:-2]) for row in images.numpy()]
            assert by_worker[0] and by_worker[1] and not set(by_worker[0]) & set(by_worker[1])
            seen += by_worker[0] + by_worker[1]
            order += [bytes(row[:-2]) for images, _ in batches for row in images.numpy()]
        assert counts[0] == counts[1]
        assert sorted(seen) == everything, epoch  # all rows, none twice
        orders.append(order)
    assert orders[0] != orders[1]


def test_workers_serve_the_same_batches_as_the_training_process_taken_in_turn(store):
    """Each worker builds a contiguous run of the rank's batches, and the DataLoader takes one from each in turn
    (plan.loader_order): the same batches as without workers, in that order, for 2 and 3 workers."""
    data = dataset(store)
    alone = list(data)
    for workers in (2, 3):
        got = list(data.loader(num_workers=workers))
        expected = [alone[b] for _, b in loader_order(worker_runs(len(alone), workers))]
        assert same_batches(got, expected), workers
        assert all(
            images.is_shared() and labels.is_shared() for images, labels in got
        )  # built in shared memory: no copy to hand over


def test_the_order_is_a_function_of_seed_and_epoch(store):
    first = dataset(store)
    epoch0 = list(first.loader(num_workers=2))
    assert same_batches(list(first.loader(num_workers=2)), epoch0)  # the same epoch again
    again = dataset(store)
    assert same_batches(list(again.loader(num_workers=2)), epoch0)  # another dataset, the same seed and epoch
    first.set_epoch(1)
    epoch1 = list(first.loader(num_workers=2))
    assert rows_of(epoch1) != rows_of(epoch0) and sorted(rows_of(epoch1)) == sorted(rows_of(epoch0))
    assert rows_of(list(dataset(store, seed=4).loader(num_workers=2))) != rows_of(epoch0)


def test_set_epoch_reaches_persistent_workers(store):
    data = dataset(store)
    expected = []
    for epoch in (0, 1, 2):
        data.set_epoch(epoch)
        expected.append(list(data))
    loader = data.loader(num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 2):
        data.set_epoch(epoch)
        got = list(loader)
        assert same_batches(got, [expected[epoch][b] for _, b in loader_order(worker_runs(len(got), 2))]), epoch


@pytest.mark.parametrize("workers_before, workers_after", [(2, 2), (0, 2), (2, 0), (2, 3)])
def test_a_resumed_loop_sees_exactly_the_batches_the_uninterrupted_one_would_have(store, workers_before, workers_after):
    """Stopped after 3 batches of epoch 1, the position saved and loaded into a fresh dataset: the rest of that epoch
    as the uninterrupted loop of workers_before workers would have seen it, whatever the workers now; then the next
    epoch as a loop of workers_after workers sees it (the same as uninterrupted when the workers are the same)."""

    def loop(data, workers, epochs, stop_after=None):
        seen = []
        loader = data.loader(num_workers=workers)
        for epoch in range(data.epoch, epochs):
            data.set_epoch(epoch)
            for batch in loader:
                seen.append(batch)
                if len(seen) == stop_after:
                    return seen
        return seen

    uninterrupted = loop(dataset(store, epoch=1), workers_before, 3)
    interrupted = dataset(store, epoch=1)
    head = loop(interrupted, workers_before, 3, stop_after=3)
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 3)
    resumed = dataset(store)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    tail = loop(resumed, workers_after, 3)
    epoch_end = len(resumed)
    assert same_batches(head + tail[: epoch_end - 3], uninterrupted[:epoch_end])
    assert same_batches(tail[epoch_end - 3 :], loop(dataset(store, epoch=2), workers_after, 3))
    if workers_after == workers_before:
        assert same_batches(head + tail, uninterrupted)


def test_a_position_resumed_twice_and_at_an_epochs_end(store):
    """Interrupted again in the resumed pass, the position still follows the first loop's order; a position saved
    at the end of an epoch is the start of the next."""
    reference = dataset(store)
    full = list(reference.loader(num_workers=2))
    first = dataset(store)
    it = iter(first.loader(num_workers=2))
    [next(it) for _ in range(2)]
    second = dataset(store)
    second.load_state_dict(first.state_dict())
    it = iter(second.loader(num_workers=0))
    got = [next(it) for _ in range(3)]
    third = dataset(store)
    third.load_state_dict(second.state_dict())
    assert third.state_dict()["batches"] == 5
    rest = list(third.loader(num_workers=3))
    assert same_batches(full[:2] + got + rest, full)
    assert third.state_dict()["epoch"] == 1 and third.state_dict()["batches"] == 0


def test_a_position_is_refused_by_a_dataset_of_another_plan(store):
    from augzarr.errors import UserError

    data = dataset(store)
    state = data.state_dict()
    with pytest.raises(UserError, match="batch_size 7 .now 5.*resume with the same"):
        dataset(store, batch_size=5).load_state_dict(state)
    with pytest.raises(UserError, match="not a position saved by augzarr.torch"):
        data.load_state_dict({"epoch": 1})


def test_a_plain_dataloader_with_workers_cannot_count_and_says_so(store):
    from torch.utils.data import DataLoader

    from augzarr.errors import UserError

    data = dataset(store)
    list(DataLoader(data, batch_size=None, num_workers=2))
    with pytest.raises(UserError, match=r"make the DataLoader with dataset.loader\(...\)"):
        data.state_dict()
    it = iter(DataLoader(data, batch_size=None, num_workers=0))  # without workers the dataset counts itself
    next(it)
    assert data.state_dict()["batches"] == 1


def test_stored_order_shared_by_ranks_covers_the_split_in_order(store):
    """A split that is not shuffled comes in stored order, rank 0's share first."""
    from augzarr.torch import StoreDataset

    stored = open_store(store).images("val")[:]
    shares = [
        list(StoreDataset(str(store), "val", 4, rank=rank, world_size=2).loader(num_workers=2)) for rank in (0, 1)
    ]
    assert len(shares[0]) == len(shares[1])
    alone = [b for _, b in loader_order(worker_runs(len(shares[0]), 2))]
    served = [shares[rank][alone.index(b)][0] for rank in (0, 1) for b in range(len(shares[0]))]
    assert np.array_equal(torch.cat(served).numpy(), stored)


def test_layouts_dtypes_and_drop_last(store):
    hwc = list(dataset(store))
    chw = list(dataset(store, layout="CHW"))
    for (x, y), (c, z) in zip(hwc, chw):
        assert c.shape == (len(x), 3, 16, 16) and c.is_contiguous() and c.dtype == torch.uint8
        assert torch.equal(c, x.permute(0, 3, 1, 2)) and torch.equal(y, z) and z.dtype == torch.int64
    dropped = list(dataset(store, drop_last=True))
    assert [len(y) for _, y in dropped] == [BATCH] * (66 // BATCH)
    assert same_batches(dropped, hwc[: len(dropped)])


def test_random_transforms_are_reproducible_however_the_epoch_is_split(store):
    """torch's generator is seeded per row by (seed, epoch, its place): a random transform gives the same images in the
    training process and in 2 workers, and the caller's own generator is left as it was."""

    def noisy(image):
        return image.float() + torch.rand(image.shape)

    data = dataset(store, transform=noisy)
    torch.manual_seed(11)
    before = torch.get_rng_state()
    alone = list(data)
    assert torch.equal(torch.get_rng_state(), before)
    got = list(data.loader(num_workers=2))
    assert same_batches(got, [alone[b] for _, b in loader_order(worker_runs(len(alone), 2))])
    assert alone[0][0].dtype == torch.float32 and not torch.equal(alone[0][0], alone[0][0].floor())


def test_bad_arguments_are_refused_in_one_line(store, monkeypatch):
    from augzarr.errors import OptionError

    for kwargs, message in [
        ({"layout": "NHWC"}, "layout 'NHWC' is not one of HWC, CHW"),
        ({"rank": 2, "world_size": 2}, r"rank 2 of world_size 2"),
        ({"transform": "flip"}, "transform must be a callable"),
        ({"world_size": 67, "rank": 0}, "too few for a batch on each of 67 ranks"),
    ]:
        with pytest.raises(OptionError, match=message):
            dataset(store, **kwargs)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(OptionError, match="WORLD_SIZE='two' is not a whole number"):
        dataset(store)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert (dataset(store).rank, dataset(store).world_size) == (2, 3)
    from augzarr.torch import StoreDataset

    with pytest.raises(OptionError, match="has no test rows: choose one of train, val"):
        StoreDataset(str(store), "test")


def test_map_style_rows(store):
    from torch.utils.data import DataLoader, RandomSampler

    from augzarr.torch import StoreRows

    opened = open_store(store)
    images, labels = opened.images("train")[:], opened.labels("train")
    rows = StoreRows(str(store), "train")
    assert len(rows) == 66
    for index in (0, 8, 65, -1):
        image, label = rows[index]
        assert image.dtype == torch.uint8 and np.array_equal(image.numpy(), images[index]) and label == labels[index]
    with pytest.raises(IndexError):
        rows[66]
    chw = StoreRows(str(store), "train", layout="CHW")
    assert torch.equal(chw[9][0], torch.from_numpy(images[9]).permute(2, 0, 1))
    sampler = RandomSampler(rows, generator=torch.Generator().manual_seed(0))
    order = list(RandomSampler(rows, generator=torch.Generator().manual_seed(0)))
    batches = list(DataLoader(rows, batch_size=10, sampler=sampler, num_workers=2))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x.numpy(), images[order]) and np.array_equal(y.numpy(), labels[order])


@pytest.fixture
def s3(monkeypatch):
    from s3server import MotoServer

    with MotoServer() as moto:
        moto.make_bucket("augzarr-torch")
        for key, value in moto.env.items():
            monkeypatch.setenv(key, value)
        yield moto


def test_object_storage_serves_the_local_batches(s3, store):
    """The local store copied to a bucket, file for file: workers of an object store start with forkserver (its
    client does not survive a fork) and open the store themselves; a plain DataLoader that forks them is told what
    to do instead of hanging."""
    from s3server import client
    from torch.utils.data import DataLoader

    from augzarr.torch import StoreDataset, StoreRows

    bucket = client(s3.url)
    for path in (p for p in store.rglob("*") if p.is_file()):
        bucket.put_object(
            Bucket="augzarr-torch", Key=f"aug.zarr/{path.relative_to(store).as_posix()}", Body=path.read_bytes()
        )
    url = "s3://augzarr-torch/aug.zarr"
    remote = StoreDataset(url, "train", BATCH, seed=4, buffer_chunks=2)
    near = StoreDataset(str(store), "train", BATCH, seed=4, buffer_chunks=2)
    assert same_batches(list(remote.loader(num_workers=2)), list(near.loader(num_workers=2)))
    assert same_batches(list(remote), list(near))
    rows, near_rows = StoreRows(url, "train"), StoreRows(str(store), "train")
    assert all(torch.equal(rows[i][0], near_rows[i][0]) for i in (0, 17, 65))
    with pytest.raises(Exception, match="make the loader with dataset.loader"):
        list(DataLoader(remote, batch_size=None, num_workers=1, multiprocessing_context="fork"))


NO_KERAS = """
import sys
from augzarr.torch import StoreDataset, StoreRows
data = StoreDataset(sys.argv[1], "train", 7)
batches = list(data.loader(num_workers=2))
rows = StoreRows(sys.argv[1], "train")[3]
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "jax"))
print(len(batches), heavy)
"""


def test_importing_and_iterating_imports_neither_tensorflow_nor_keras(store):
    result = subprocess.run(
        [sys.executable, "-c", NO_KERAS, str(store)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["10", "[]"], result.stdout


HIDDEN_TORCH = """
import sys
sys.modules["torch"] = None  # as if the torch extra were not installed
try:
    import augzarr.torch
except ImportError as exc:
    from augzarr.errors import UserError
    print(type(exc).__name__, isinstance(exc, UserError))
    print(exc)
"""


def test_without_torch_the_import_names_the_extra():
    result = subprocess.run([sys.executable, "-c", HIDDEN_TORCH], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    kind, line = result.stdout.strip().splitlines()
    assert kind == "MissingExtra True"
    assert line == "augzarr.torch needs PyTorch: pip install 'augzarr[torch]'"


def test_the_example_resumed_after_a_stop_trains_to_the_uninterrupted_weights(store, tmp_path):
    """examples/torch_train.py: 2 workers, set_epoch, a checkpoint; stopped after 3 steps and run again, its final
    weights equal those of a run that was never stopped."""
    script = REPO / "examples" / "torch_train.py"
    common = [
        sys.executable,
        str(script),
        "--store",
        str(store),
        "--epochs",
        "2",
        "--batch-size",
        str(BATCH),
        "--workers",
        "2",
    ]

    def run(*extra: str) -> str:
        result = subprocess.run([*common, *extra], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    whole, stopped = tmp_path / "whole.pt", tmp_path / "stopped.pt"
    assert "epoch 2/2" in run("--checkpoint", str(whole))
    assert "stopped after step 3" in run("--checkpoint", str(stopped), "--stop-after", "3")
    output = run("--checkpoint", str(stopped))
    assert "resumed from" in output and "epoch 0, 3 batches into it, step 3" in output and "epoch 2/2" in output
    a, b = torch.load(whole, weights_only=False), torch.load(stopped, weights_only=False)
    assert a["step"] == b["step"] == 20
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_workers_get_the_credentials_set_after_their_forkserver_started(s3, store, monkeypatch):
    """A forkserver keeps the environment of the moment it started: an object store's workers get the client's
    variables of when the loader starts them (a notebook that sets its credentials after a first loader)."""
    from s3server import client

    from augzarr.torch import StoreDataset, forkserver

    given = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in given:
        monkeypatch.delenv(name)
    started = forkserver().Process(target=os.getpid)  # the forkserver starts now, without the credentials
    started.start()
    started.join()
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    bucket = client(s3.url)
    for path in (p for p in store.rglob("*") if p.is_file()):
        bucket.put_object(
            Bucket="augzarr-torch", Key=f"late.zarr/{path.relative_to(store).as_posix()}", Body=path.read_bytes()
        )
    remote = StoreDataset("s3://augzarr-torch/late.zarr", "train", BATCH, seed=4, buffer_chunks=2)
    near = StoreDataset(str(store), "train", BATCH, seed=4, buffer_chunks=2)
    assert same_batches(list(remote.loader(num_workers=1)), list(near))
