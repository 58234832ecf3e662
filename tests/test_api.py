"""Issue #14 point 1: the public API, exercised through `import augzarr` alone (the fixtures write the
images and run the command a user would compare with)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_image_folder

import augzarr

ARGS = {"copies": 2, "chunk_size": 8, "seed": 3}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("api") / "images", {"ant": 12, "bee": 10, "cow": 9}, size=16)


@pytest.fixture(scope="module")
def store(images, tmp_path_factory) -> augzarr.Store:
    return augzarr.build(
        str(images), out=str(tmp_path_factory.mktemp("api-store") / "aug.zarr"), progress=False, **ARGS
    )


def stored_files(root: Path) -> dict[str, bytes]:
    found = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    meta = json.loads(found.pop("zarr.json"))
    meta["attributes"].pop("built")  # when it finished
    return {**found, "zarr.json": json.dumps(meta, sort_keys=True).encode()}


def test_build_makes_the_store_build_aug_makes_and_says_what_is_in_it(store, images, tmp_path):
    cli = tmp_path / "cli.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(cli),
        "--copies",
        "2",
        "--chunk-size",
        "8",
        "--seed",
        "3",
        "--preview",
        "0",
        check=True,
    )
    assert stored_files(Path(store.location)) == stored_files(cli)
    assert store.class_names == ["ant", "bee", "cow"] and store.image_shape == (16, 16, 3)
    assert store.splits == ["train", "val"]
    assert repr(store).startswith(f"<augzarr.Store {store.location}: ") and "3 classes" in repr(store)
    assert "ant" in store.summary() and "crop-flip" in store.summary()
    made = store.provenance
    assert (made["source"]["kind"], made["policy"]["name"], made["copies"], made["seed"]) == (
        "image-folder",
        "crop-flip",
        2,
        3,
    )
    assert made["source"]["train_count"] == 31 and len(made["source"]["content_hash"]) > 20


def test_arrays_give_a_whole_split_with_its_labels(store):
    images, labels = store.arrays("train")
    assert images.dtype == np.uint8 and images.shape == (store.rows("train"), 16, 16, 3)
    assert labels.shape == (store.rows("train"),) and set(labels.tolist()) <= {0, 1, 2}
    val_images, _ = store.arrays("val")
    assert len(val_images) == store.rows("val") > 0
    with pytest.raises(augzarr.UserError, match="has no split 'test'; it has train, val"):
        store.arrays("test")


def test_open_store_reads_what_build_wrote_and_refuses_what_is_not_a_store(store, tmp_path):
    again = augzarr.open_store(store.location)
    assert again.rows("train") == store.rows("train") and again.class_names == store.class_names
    with pytest.raises(augzarr.UserError, match="does not exist: build one with build-aug"):
        augzarr.open_store(tmp_path / "nothing.zarr")


def test_bad_options_raise_the_commands_one_line(images, tmp_path):
    with pytest.raises(augzarr.UserError, match="unknown option copise; the options are"):
        augzarr.build(str(images), out=str(tmp_path / "a.zarr"), copise=3, progress=False)
    with pytest.raises(augzarr.UserError, match="--copies must be in"):
        augzarr.build(str(images), out=str(tmp_path / "b.zarr"), copies=-1, progress=False)
    assert not (tmp_path / "b.zarr").exists()


@pytest.mark.parametrize(
    "options, message",
    [  # issue #21 point 8: each was a raw exception, or accepted
        ({"copies": 2.7}, "--copies must be a whole number, not 2.7 (a float)"),
        ({"copies": "2"}, "--copies must be a whole number, not '2' (a str)"),
        ({"val_fraction": "0.3"}, "--val-fraction must be a number, not '0.3' (a str)"),
        ({"policy": {"transform": {"__class_fullname__": "HorizontalFlip"}}}, "--policy must be a string, not a dict"),
        ({"copies": True}, "--copies must be a whole number, not True (a bool)"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"progress": "no"}, "progress must be True or False, not 'no'"),
    ],
)
def test_build_refuses_a_wrong_type_in_one_line_naming_the_argument(options, message, images, tmp_path):
    with pytest.raises(augzarr.UserError) as raised:
        augzarr.build(str(images), out=str(tmp_path / "a.zarr"), **{"progress": False, **options})
    assert str(raised.value) == message
    assert not (tmp_path / "a.zarr").exists()


def test_build_takes_paths_and_numpy_numbers(images, tmp_path):
    built = augzarr.build(
        images, out=tmp_path / "a.zarr", progress=False, copies=np.int64(1), chunk_size=np.int32(8), seed=3
    )
    assert built.provenance["copies"] == 1 and built.location == str(tmp_path / "a.zarr")


def test_the_arguments_of_build_are_named_in_its_signature_for_an_editor():
    parameters = inspect.signature(augzarr.build).parameters
    assert {
        "copies",
        "policy",
        "val_fraction",
        "seed",
        "workers",
        "overwrite",
        "skip_bad",
        "license",
        "scheduler",
    } <= set(parameters)
    assert parameters["copies"].default == 5 and parameters["policy"].default == "crop-flip"


@pytest.mark.parametrize(
    "call, message",
    [  # issue #21 point 8: the stream and the sheet check as train and inspect-aug do
        (
            lambda s: s.stream(online="bogus"),
            "--online: unknown online operation bogus: choose from flip, shift, erase",
        ),
        (lambda s: s.stream(buffer_chunks=0), "--buffer-chunks must be at least 1"),
        (lambda s: s.stream(batch_size=0), "--batch-size must be in [1, 65536]"),
        (lambda s: s.stream(batch_size="8"), "--batch-size must be a whole number, not '8' (a str)"),
        (lambda s: s.stream(seed=-1), "--seed must be in [0, 2**32)"),
        (lambda s: s.stream(shuffle="yes"), "shuffle must be True, False or None, not 'yes'"),
        (lambda s: s.contact_sheet(count=0), "count must be in [1, 256]"),
        (lambda s: s.contact_sheet(count=-1), "count must be in [1, 256]"),
        (lambda s: s.contact_sheet(count=2.5), "count must be a whole number, not 2.5 (a float)"),
    ],
)
def test_stream_and_contact_sheet_refuse_bad_arguments_in_one_line(store, call, message):
    with pytest.raises(augzarr.UserError) as raised:
        call(store)
    assert str(raised.value) == message


def test_the_training_stream_serves_every_row_once_an_epoch_in_a_new_order_each_epoch(store):
    stream = store.stream("train", batch_size=5, seed=1)
    _, all_labels = store.arrays("train")
    per_epoch = stream.batches_per_epoch
    epochs = [np.concatenate([stream[e * per_epoch + i][1] for i in range(per_epoch)]) for e in range(2)]
    for labels in epochs:
        assert sorted(labels.tolist()) == sorted(all_labels.tolist())
    assert not np.array_equal(epochs[0], epochs[1])
    fresh = store.stream("train", batch_size=5, seed=1)  # the same seed: the same batches
    assert np.array_equal(np.concatenate([fresh[i][1] for i in range(per_epoch)]), epochs[0])
    val = store.stream("val", batch_size=4)
    assert np.array_equal(np.concatenate([val[i][1] for i in range(val.num_batches)]), store.arrays("val")[1])
    with pytest.raises(augzarr.UserError, match="online operations apply to a shuffled"):
        store.stream("val", online="flip")


FIT = """
import sys, numpy as np, keras, augzarr
store = augzarr.open_store(sys.argv[1])
model = keras.Sequential([keras.Input(store.image_shape), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                          keras.layers.Dense(len(store.class_names), activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
train = store.stream("train", batch_size=8, seed=0, online="flip,erase")
history = model.fit(train, steps_per_epoch=train.batches_per_epoch, validation_data=store.stream("val", batch_size=8),
                    epochs=2, verbose=0)
print(keras.backend.backend(), len(history.history["val_accuracy"]), model.evaluate(store.stream("val"), verbose=0)[1] >= 0)
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_users_own_model_fits_from_the_stream_on_either_backend(store, backend):
    result = subprocess.run(
        [sys.executable, "-c", FIT, store.location],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [backend, "2", "True"]


def test_the_contact_sheet_shows_each_original_beside_its_copies(store, tmp_path):
    sheet = store.contact_sheet(count=3)
    assert sheet.mode == "RGB" and sheet.height > 3 * 16 and sheet.width > 3 * 16
    assert hasattr(sheet, "_repr_png_")  # what a notebook displays inline
    sheet.save(tmp_path / "sheet.png")
    assert store.contact_sheet(count=1).height < sheet.height


def test_import_augzarr_is_cheap_and_its_names_are_the_api():
    code = "import sys, augzarr; print(sorted(m for m in ('keras', 'tensorflow', 'albumentations', 'zarr') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
    assert set(augzarr.__all__) == {"Store", "UserError", "__version__", "build", "open_store"}
    assert all(getattr(augzarr, name) is not None for name in augzarr.__all__)
    with pytest.raises(AttributeError):
        augzarr.build_store  # noqa: B018  internals stay in their modules
