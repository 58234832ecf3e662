"""Issue #12 point 1: train --online, random operations on each streamed batch, vectorised and seeded
from (seed, epoch, batch) alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from augzarr.store_format import open_store
from augzarr.trainer.online import ERASE_FILL, OnlineAugment, parse_online


@pytest.fixture
def store(small_store):
    return small_store


def batch(n: int = 64, size: int = 16) -> np.ndarray:
    return np.random.default_rng(5).integers(1, 256, (n, size, size, 3), dtype=np.uint8)  # no black: padding shows


def test_the_same_seed_epoch_and_batch_give_the_same_bytes_and_others_differ():
    images = batch()
    augment = OnlineAugment(("flip", "shift", "erase"), seed=3)
    first = augment(images, epoch=2, batch=7)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, OnlineAugment(("flip", "shift", "erase"), seed=3)(images.copy(), 2, 7))
    for other in (
        augment(images, 2, 8),
        augment(images, 3, 7),
        OnlineAugment(("flip", "shift", "erase"), 4)(images, 2, 7),
    ):
        assert not np.array_equal(first, other)
    assert np.array_equal(images, batch())  # the batch handed in (a view of the stream's window) is left alone


def test_each_operation_does_what_it_says():
    images = batch()
    flipped = OnlineAugment(("flip",), 0)(images, 0, 0)
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    unchanged = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert (
        all(m != u for m, u in zip(mirrored, unchanged)) and 16 < sum(mirrored) < 48
    )  # each image either, about half mirrored
    shifted = OnlineAugment(("shift",), 0)(images, 0, 0)
    for s, i in zip(shifted, images):  # a translation by at most 2 px (1/8 of 16) with black where it moved in
        dy, dx = next(
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(
                s[max(dy, 0) : 16 + min(dy, 0), max(dx, 0) : 16 + min(dx, 0)],
                i[max(-dy, 0) : 16 + min(-dy, 0), max(-dx, 0) : 16 + min(-dx, 0)],
            )
        )
        assert (s.reshape(-1, 3).min(axis=1) == 0).sum() == 16 * 16 - (16 - abs(dy)) * (16 - abs(dx))
    erased = OnlineAugment(("erase",), 0)(images, 0, 0)
    for e, i in zip(erased, images):
        changed = np.argwhere((e != i).any(axis=-1))
        grey = (e == ERASE_FILL).all(axis=-1)
        assert grey[tuple(changed.T)].all()  # every changed pixel is the fill
        rows, cols = np.unique(changed[:, 0]), np.unique(changed[:, 1])
        assert (
            len(rows) <= 4 and len(cols) <= 4 and len(changed) == len(rows) * len(cols)
        )  # one square, a quarter of the side


def test_names_are_checked():
    assert parse_online("erase, flip") == ("flip", "erase") and parse_online("") == () and parse_online("none") == ()
    with pytest.raises(ValueError, match="unknown online operation rotate: choose from flip, shift, erase"):
        parse_online("flip,rotate")


def test_a_resumed_stream_serves_the_uninterrupted_streams_augmented_batches(store):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    ops = ("flip", "shift", "erase")
    whole = StoreStream(opened, "train", batch_size=7, shuffle=True, seed=1, buffer_chunks=2, online=ops)
    resumed = StoreStream(
        opened, "train", batch_size=7, shuffle=True, seed=1, buffer_chunks=2, online=ops, start_epoch=1
    )
    plain = StoreStream(opened, "train", batch_size=7, shuffle=True, seed=1, buffer_chunks=2)
    try:
        per_epoch = whole.batches_per_epoch
        for i in range(per_epoch):
            x, y = whole[per_epoch + i]
            rx, ry = resumed[i]
            assert np.array_equal(x, rx) and np.array_equal(y, ry)
            px, py = plain[per_epoch + i]
            assert np.array_equal(y, py)  # the same rows and labels, in the same order, only the pixels moved
            assert np.array_equal(x, OnlineAugment(ops, 1)(px, 1, i))
        validation = StoreStream(opened, "val", batch_size=7, shuffle=False, online=ops)
        assert validation.online is None  # validation and evaluation see the stored rows
    finally:
        for stream in (whole, resumed, plain):
            stream.close()


def test_train_records_its_online_operations_and_refuses_unknown_ones(store, tmp_path):
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"  # trained in this process (Keras loads once); the command line's refusal below
    train_run(
        {"store": str(store), "epochs": 1, "model": "shallow", "batch_size": 16, "online": "flip,shift,erase"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    assert json.loads((run_dir / "run.json").read_text())["options"]["online"] == "flip,shift,erase"
    assert "online operations on each batch flip,shift,erase" in (run_dir / "model_card.md").read_text()
    bad = run_cli("train", "--store", str(store), "--online", "flip,rotate", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "train: error: --online: unknown online operation rotate: choose from flip, shift, erase"
    )


@pytest.mark.parametrize(
    "typed, recorded",
    [
        (" flip , shift ", "flip,shift"),
        ("flip,", "flip"),
        ("flip,flip", "flip"),
        ("erase,shift,flip", "flip,shift,erase"),
        ("none", ""),
        ("", ""),
    ],
)
def test_the_options_record_the_online_operations_as_they_run(typed, recorded):
    from augzarr.trainer.options import TrainOptions

    options = TrainOptions(online=typed, distribute=True, devices=" cpu:1 , cpu:0,cpu:1,")
    options.validate()
    normalised = options.normalised()
    assert normalised.online == recorded and normalised.online_ops == options.online_ops
    assert normalised.devices == "cpu:1,cpu:0"  # --devices: without blanks or repeats, in the order given
    assert normalised.normalised() == normalised


def test_a_run_records_the_normalised_online_list_and_the_same_command_still_resumes(store, tmp_path):
    """Issue #21 point 12: --online ' shift , flip,flip' runs flip,shift and is recorded so; run again after an
    interruption, or with --resume spelled another way, it continues the run instead of refusing it."""
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"
    given = {"store": str(store), "epochs": 1, "model": "shallow", "batch_size": 16, "online": " shift , flip,flip"}
    train_run(given, out=run_dir, verbose=0, say=lambda _: None)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["options"]["online"] == "flip,shift"
    assert "online operations on each batch flip,shift;" in (run_dir / "model_card.md").read_text()
    # as if stopped before its reports, and recorded verbatim as a run before this fix recorded it
    (run_dir / "run.json").write_text(
        json.dumps({**run, "status": "running", "options": {**run["options"], "online": " shift , flip,flip"}})
    )
    said = []
    result = train_run(given, out=run_dir, verbose=0, say=said.append)  # the same command again
    assert result.resumed_from == 1 and any("resuming" in line for line in said)
    assert json.loads((run_dir / "run.json").read_text())["options"]["online"] == "flip,shift"
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "status": "running"}))
    result = train_run({"online": "flip,shift,"}, out=run_dir, resume=True, verbose=0, say=lambda _: None)
    assert result.resumed_from == 1
