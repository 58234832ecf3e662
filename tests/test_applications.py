"""train --model mobilenet_v3_small / efficientnet_v2_b0 (keras.applications) for photos: trained from scratch, or from
ImageNet weights read from Keras' cache or a file (files these tests write themselves: the same architecture at a small
size, saved under the name Keras' cache gives it; no network), frozen then fine-tuned, resumed across the switch,
recorded; offline without the weights, one line; the notebook's CNN refused on photos."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, run_cli, write_image_folder

from augzarr.errors import OptionError, UserError
from augzarr.store_format import open_store

MOBILENET_FILE = "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
EFFICIENTNET_FILE = "efficientnetv2-b0_notop.h5"


def build_store(root: Path, size: int, classes: dict[str, int]) -> Path:
    images = write_image_folder(root / "images", classes, size=size)
    out = root / "store.zarr"
    run_cli(
        "build-aug",
        "--source",
        str(images),
        "--out",
        str(out),
        "--copies",
        "1",
        "--chunk-size",
        "8",
        "--preview",
        "0",
        "--quiet",
        check=True,
    )
    return out


PHOTO_TRAIN_ROWS = 36  # photo_store's training rows: a batch of them all is one step an epoch, traced once


@pytest.fixture(scope="module")
def photo_store(tmp_path_factory) -> Path:
    """32x32 (the smallest keras.applications builds for), 3 classes; read it, never change it."""
    store = build_store(tmp_path_factory.mktemp("photos"), 32, {"ant": 8, "bee": 8, "cow": 6})
    assert open_store(store).images("train").shape[0] == PHOTO_TRAIN_ROWS
    return store


def write_backbone_weights(keras_name: str, path: Path, seed: int = 7) -> list[np.ndarray]:
    """The backbone's weights as Keras' own cache files hold them (the legacy HDF5 layout model.load_weights reads
    from a .h5 name), from the same architecture built at 32x32 with weights of its own seed; returns them."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(seed)
    backbone = getattr(keras.applications, keras_name)(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    return [w.numpy() for w in backbone.weights]


def train_here(store: Path, out: Path, **options) -> list[str]:
    from augzarr.trainer.training import train_run

    said: list[str] = []
    given = {"store": str(store), "epochs": 1, "batch_size": PHOTO_TRAIN_ROWS, **options}
    train_run(given, out=out, verbose=0, say=said.append)
    return said


def backbone_weights(run_dir: Path, name: str) -> tuple[list[np.ndarray], bool]:
    import keras

    from augzarr.trainer.applications import backbone_of

    model = keras.models.load_model(run_dir / "model.keras")
    assert model.name == name
    backbone = backbone_of(model)
    return [w.numpy() for w in backbone.weights], backbone.trainable


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imagenet_weights_are_read_from_keras_cache_and_recorded(photo_store, tmp_path, monkeypatch):
    cache = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(cache))
    cached = cache / "models" / MOBILENET_FILE
    written = write_backbone_weights("MobileNetV3Small", cached)
    run_dir = tmp_path / "run"
    said = train_here(photo_store, run_dir, model="mobilenet_v3_small", weights="imagenet", freeze_epochs=1)

    # frozen for the whole run, in inference mode: the backbone is the cache file's, to the last BatchNorm statistic
    trained, trainable = backbone_weights(run_dir, "mobilenet_v3_small")
    assert not trainable and len(trained) == len(written)
    assert all(np.array_equal(a, b) for a, b in zip(trained, written))
    model = json.loads((run_dir / "run.json").read_text())["model"]
    assert model["weights_file"] == str(cached.resolve()) and model["weights_sha256"] == sha256(cached)
    assert model["weights_url"].endswith("/mobilenet_v3/" + MOBILENET_FILE)
    assert model["weights_downloaded"] is False and model["weights_published"] is False  # not Keras' own file
    assert any("not the file Keras publishes" in line for line in said)
    card = (run_dir / "model_card.md").read_text()
    assert f"from Keras' cache `{cached.resolve()}`" in card and sha256(cached) in card
    assert "never fine-tuned" in card


def test_from_scratch_by_default_with_every_layer_trained(photo_store, tmp_path):
    run_dir = tmp_path / "run"
    train_here(photo_store, run_dir, model="mobilenet_v3_small")
    _, trainable = backbone_weights(run_dir, "mobilenet_v3_small")
    run = json.loads((run_dir / "run.json").read_text())
    assert trainable and run["options"]["weights"] == "none" and run["fine_tune_learning_rate"] is None
    assert not any(key.startswith("weights_") for key in run["model"])
    assert "- starting weights: none, trained from scratch" in (run_dir / "model_card.md").read_text()
    # a run of a keras.applications model is judged again like any other
    assert run_cli("evaluate", "--model", str(run_dir), "--store", str(photo_store), check=True).returncode == 0


def test_offline_without_the_weights_one_line_names_the_file_and_where_to_put_it(photo_store, tmp_path):
    cache = tmp_path / "empty-home"
    closed = "http://127.0.0.1:9"  # a proxy nobody listens on: the download fails at once, as offline
    env = {"KERAS_HOME": str(cache), "https_proxy": closed, "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    run_dir = tmp_path / "run"
    result = run_cli(
        "train",
        "--store",
        str(photo_store),
        "--model",
        "mobilenet_v3_small",
        "--weights",
        "imagenet",
        "--epochs",
        "1",
        "--out",
        str(run_dir),
        env=env,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert MOBILENET_FILE in lines[0] and str(cache / "models") in lines[0] and "storage.googleapis.com" in lines[0]
    assert "--weights PATH" in lines[0]
    assert not run_dir.exists() and not (cache / "models" / MOBILENET_FILE).exists()


def test_weights_of_another_architecture_are_refused_in_one_line(photo_store, tmp_path):
    path = tmp_path / "mobilenet.h5"
    write_backbone_weights("MobileNetV3Small", path)
    with pytest.raises(UserError, match=r"cannot load .*mobilenet\.h5 into EfficientNetV2B0") as caught:
        train_here(photo_store, tmp_path / "run", model="efficientnet_v2_b0", weights=str(path))
    assert "\n" not in str(caught.value) and EFFICIENTNET_FILE in str(caught.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "deep", "weights": "imagenet"}, "--weights imagenet applies to the keras.applications models only"),
        ({"model": "mobilenet_v3_small", "freeze_epochs": 1}, "--freeze-epochs needs pretrained --weights"),
        (
            {"model": "mobilenet_v3_small", "weights": "imagenet", "freeze_epochs": 3, "epochs": 2},
            "--freeze-epochs 3 is more than --epochs 2",
        ),
        ({"model": "mobilenet_v3_small", "weights": "weights.bin"}, "--weights must be none or imagenet, or the path"),
    ],
)
def test_weights_options_that_cannot_go_together_are_refused(options, message):
    from augzarr.trainer.options import TrainOptions

    with pytest.raises(OptionError, match=message):
        TrainOptions(**options).validate()


def test_keras_applications_need_32_pixels_and_take_one_channel(tmp_path):
    from augzarr.trainer.models import build_model

    model = build_model("efficientnet_v2_b0", (40, 32, 1), 2)
    probabilities = model.predict(np.zeros((2, 40, 32, 1), np.uint8), verbose=0)
    assert probabilities.shape == (2, 2) and np.allclose(probabilities.sum(axis=1), 1)
    with pytest.raises(UserError, match="takes images of at least 32x32, the store holds 16x16"):
        build_model("mobilenet_v3_small", (16, 16, 3), 2)


def test_the_notebook_cnn_is_refused_on_photos_naming_the_models_that_fit(tmp_path):
    from augzarr.trainer.models import check_notebook_model_fits

    check_notebook_model_fits("deep", (64, 64, 3))  # CIFAR's size twice over still trains
    with pytest.raises(UserError, match="99,123,200 weights"):
        check_notebook_model_fits("deep", (224, 224, 3))
    store = build_store(tmp_path, 96, {"ant": 3, "bee": 3})
    run_dir = tmp_path / "run"
    result = run_cli("train", "--store", str(store), "--epochs", "1", "--out", str(run_dir))  # the default, deep
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--model deep" in lines[0] and "96x96" in lines[0], result.stderr
    assert "--model mobilenet_v3_small or efficientnet_v2_b0" in lines[0]
    assert not run_dir.exists()


def test_a_checkpoint_saved_frozen_is_unfrozen_and_compiled_at_the_fine_tuning_rate(tmp_path):
    """Resumed at the switch: the checkpoint of the last frozen epoch loads frozen, with the first phase's optimizer;
    entering fine-tuning unfreezes it and compiles a fresh optimizer at 1/100 of the rate."""
    import keras

    from augzarr.trainer.applications import backbone_of
    from augzarr.trainer.models import build_model
    from augzarr.trainer.options import TrainOptions
    from augzarr.trainer.training import compile_for, enter_phase, training_phases

    options = TrainOptions(model="mobilenet_v3_small", weights="imagenet", freeze_epochs=1, epochs=3, optimizer="adam")
    frozen, tuning = training_phases(options)
    assert (frozen.first, frozen.end, frozen.frozen) == (0, 1, True) and (tuning.first, tuning.end) == (1, 3)
    model = build_model("mobilenet_v3_small", (32, 32, 3), 3, pretrained=True)
    backbone_of(model).trainable = False
    compile_for(model, options, frozen, steps_per_epoch=2)
    x, y = np.zeros((4, 32, 32, 3), np.uint8), np.arange(4) % 3
    model.fit(x, y, epochs=1, verbose=0)
    few = len(model.trainable_weights)
    model.save(tmp_path / "epoch-0001.keras")

    loaded = keras.models.load_model(tmp_path / "epoch-0001.keras")
    assert not backbone_of(loaded).trainable and len(loaded.trainable_weights) == few
    said = []
    enter_phase(loaded, options, tuning, 2, contextlib_null(), said.append)
    assert backbone_of(loaded).trainable and len(loaded.trainable_weights) > few
    assert float(loaded.optimizer.learning_rate.numpy()) == pytest.approx(1e-5)  # cosine's start: Adam's 1e-3 / 100
    assert said == ["epoch 2: the backbone unfrozen, fine-tuning the whole model at learning rate 1e-05"]
    loaded.fit(x, y, epochs=1, verbose=0)  # the new optimizer takes every weight
    enter_phase(loaded, options, tuning, 2, contextlib_null(), said.append)  # already unfrozen: kept as it is
    assert len(said) == 1 and int(loaded.optimizer.iterations.numpy()) == 1


def contextlib_null():
    import contextlib

    return contextlib.nullcontext()


def test_weights_from_a_path_frozen_killed_before_fine_tuning_resume_across_the_switch_at_a_hundredth_of_the_rate(
    photo_store, tmp_path
):
    """Backbone weights from a file, frozen for 3 epochs then fine-tuned at 1/100 of the rate; killed (kill -9) inside
    the frozen phase, the same run resumed across the switch ends fine-tuned, and records the file."""
    from test_train import wait_for_epochs

    path = tmp_path / "mine" / "backbone.h5"
    written = write_backbone_weights("MobileNetV3Small", path)
    run_dir = tmp_path / "run"
    freeze = 3
    command = [
        str(BIN / "train"),
        "--store",
        str(photo_store),
        "--model",
        "mobilenet_v3_small",
        "--weights",
        str(path),
        "--freeze-epochs",
        str(freeze),
        "--epochs",
        "40",
        "--lr-schedule",
        "constant",
        "--batch-size",
        str(PHOTO_TRAIN_ROWS),
        "--out",
        str(run_dir),
        "--quiet",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for_epochs(run_dir, 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads((run_dir / "state" / "progress.json").read_text())["epochs_done"]
    assert 1 <= done < 40
    end = max(done, freeze) + 1  # one fine-tuning epoch at least
    resumed = run_cli("train", "--resume", "--out", str(run_dir), "--epochs", str(end), check=True)
    assert f"after epoch {done} of {end}" in resumed.stdout
    if done <= freeze:  # killed before the switch: the resumed run makes it
        assert f"epoch {freeze + 1}: the backbone unfrozen" in resumed.stdout
    history = (run_dir / "history.csv").read_text().splitlines()
    rate = history[0].split(",").index("learning_rate")
    rates = [float(row.split(",")[rate]) for row in history[1:]]
    # rmsprop's default, then a hundredth of it
    assert rates == pytest.approx([1e-3 if epoch <= freeze else 1e-5 for epoch in range(1, end + 1)])
    trained, trainable = backbone_weights(run_dir, "mobilenet_v3_small")
    assert trainable and not all(np.array_equal(a, b) for a, b in zip(trained, written))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["learning_rate"] == pytest.approx(1e-3) and run["fine_tune_learning_rate"] == pytest.approx(1e-5)
    assert run["model"]["weights_file"] == str(path.resolve()) and "weights_url" not in run["model"]
    assert run["options"]["weights"] == str(path) and run["options"]["freeze_epochs"] == freeze
    card = (run_dir / "model_card.md").read_text()
    assert (
        f"from `{path.resolve()}` (--weights PATH)" in card and f"fine-tuned for {end - freeze} epochs at 1e-05" in card
    )
