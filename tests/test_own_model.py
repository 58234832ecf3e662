"""train --model PATH.py:FUNCTION and --model PATH.keras: the user's own model, trained, recorded, resumed, refused."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, run_cli, write_image_folder

from augzarr.errors import UserError

MODELS_PY = '''
import keras


@keras.saving.register_keras_serializable(package="mine")
class Halve(keras.layers.Layer):
    """A custom layer: a checkpoint of a model holding it loads only once this file is imported."""

    def call(self, x):
        return x * 0.5


def tiny(image_shape, n_classes):
    return keras.Sequential([keras.Input(image_shape, dtype="uint8"), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(n_classes, activation="softmax")], name="tiny")


def with_custom_layer(image_shape, n_classes):
    return keras.Sequential([keras.Input(image_shape, dtype="uint8"), keras.layers.Rescaling(1 / 255), Halve(),
                             keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax")], name="custom")


def compiled(image_shape, n_classes):
    model = tiny(image_shape, n_classes)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def unbuilt(image_shape, n_classes):
    return keras.Sequential([keras.layers.Rescaling(1 / 255), keras.layers.Flatten(), keras.layers.Dense(n_classes, activation="softmax")])


def raises(image_shape, n_classes):
    raise RuntimeError("no weights for " + str(image_shape))


def not_a_model(image_shape, n_classes):
    return "a model"


def logits(image_shape, n_classes):
    return keras.Sequential([keras.Input(image_shape), keras.layers.Flatten(), keras.layers.Dense(n_classes)])


def wrong_shape(image_shape, n_classes):
    return tiny((8, 8, 3), n_classes + 2)


SIZE = 3  # not a function
'''


@pytest.fixture(scope="module")
def models_py(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("own") / "models.py"
    path.write_text(MODELS_PY)
    return path


def train(store: Path, model: str, out: Path, *more: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(
        "train",
        "--store",
        str(store),
        "--model",
        model,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--out",
        str(out),
        *more,
        check=check,
    )


def train_here(store: Path, model: str, out: Path, **options) -> list[str]:
    """train's library call in this process (Keras loads once, not per command), where the test is not about the
    command line; returns the lines train would print."""
    from augzarr.trainer.training import train_run

    said: list[str] = []
    train_run(
        {"store": str(store), "model": model, "epochs": 1, "batch_size": 16, **options},
        out=out,
        verbose=0,
        say=said.append,
    )
    return said


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_function_in_a_python_file_is_trained_and_recorded(small_store, models_py, tmp_path):
    import keras

    run_dir = tmp_path / "run"
    result = train(small_store, f"{models_py}:tiny", run_dir)
    assert "Test accuracy:" in result.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["options"]["model"] == f"{models_py}:tiny"
    saved = keras.models.load_model(run_dir / "model.keras")
    assert (
        saved.name == "tiny" and saved.optimizer.__class__.__name__ == "RMSprop"
    )  # compiled by train, with its optimizer
    assert run["model"] == {
        "spec": f"{models_py}:tiny",
        "kind": "python",
        "file": str(models_py.resolve()),
        "sha256": sha256(models_py),
        "function": "tiny",
        "came_compiled": False,
        "name": "tiny",
        "parameters": saved.count_params(),
    }
    assert run["parameters"] == saved.count_params()
    card = (run_dir / "model_card.md").read_text()
    assert f"- model: `{models_py}:tiny`, {saved.count_params():,} parameters; your own, built by `tiny()`" in card
    assert sha256(models_py) in card and "CNN" not in card.splitlines()[0]
    assert not (run_dir / "tensorboard").exists()  # only with --tensorboard
    from augzarr.trainer.evaluate import evaluate_on_store

    # judged in this process (the kill -9 test below runs the evaluate command on an own model)
    assert evaluate_on_store(run_dir, str(small_store), None, 256)[0]["count"] > 0


def test_a_compiled_model_is_compiled_again_with_trains_settings(small_store, models_py, tmp_path):
    import keras

    run_dir = tmp_path / "run"
    said = train_here(small_store, f"{models_py}:compiled", run_dir, optimizer="adam", learning_rate=0.003)
    assert "came compiled; train compiles it again with --optimizer adam" in "\n".join(said)
    saved = keras.models.load_model(run_dir / "model.keras")
    assert (
        saved.optimizer.__class__.__name__ == "Adam" and saved.loss == "sparse_categorical_crossentropy"
    )  # not its SGD, not its mse
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"]["came_compiled"] is True and run["learning_rate"] == 0.003
    assert "compiled there and compiled again by train" in (run_dir / "model_card.md").read_text()


def test_an_unbuilt_model_is_built_for_the_stores_images(small_store, models_py, tmp_path):
    run_dir = tmp_path / "run"
    train_here(small_store, f"{models_py}:unbuilt", run_dir)
    assert json.loads((run_dir / "run.json").read_text())["model"]["parameters"] == 16 * 16 * 3 * 3 + 3


def test_a_saved_keras_model_is_trained_from_its_weights(small_store, models_py, tmp_path):
    import keras
    import numpy as np

    first = tmp_path / "first"
    train_here(small_store, f"{models_py}:tiny", first)
    start = tmp_path / "start.keras"
    (first / "model.keras").rename(start)
    start_weights = keras.models.load_model(start).get_weights()
    run_dir = tmp_path / "run"
    train_here(small_store, str(start), run_dir, learning_rate=1e-9, lr_schedule="constant")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["model"] == {
        "spec": str(start),
        "kind": "keras",
        "file": str(start.resolve()),
        "sha256": sha256(start),
        "name": "tiny",
        "parameters": run["parameters"],
    }
    trained = keras.models.load_model(run_dir / "model.keras").get_weights()
    assert all(
        np.allclose(a, b, atol=1e-5) for a, b in zip(start_weights, trained)
    )  # it started from the file's weights
    assert f"loaded from `{start.resolve()}` (sha256 `{sha256(start)}`)" in (run_dir / "model_card.md").read_text()


def test_a_run_of_an_own_model_with_a_custom_layer_resumes_after_kill_9(small_store, models_py, tmp_path):
    from test_train import wait_for_epochs

    run_dir = tmp_path / "run"
    epochs = 30
    process = subprocess.Popen(
        [
            str(BIN / "train"),
            "--store",
            str(small_store),
            "--model",
            f"{models_py}:with_custom_layer",
            "--epochs",
            str(epochs),
            "--batch-size",
            "8",
            "--out",
            str(run_dir),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for_epochs(run_dir, 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads((run_dir / "state" / "progress.json").read_text())["epochs_done"]
    assert 1 <= done < epochs
    # a new process: the checkpoint's Halve layer is known only once train imports models.py again
    resumed = run_cli("train", "--resume", "--out", str(run_dir), "--epochs", str(done + 1), check=True)
    assert f"after epoch {done} of {done + 1}" in resumed.stdout
    run = json.loads((run_dir / "run.json").read_text())
    assert (
        run["status"] == "complete"
        and run["model"]["function"] == "with_custom_layer"
        and run["model"]["sha256"] == sha256(models_py)
    )
    assert run_cli("evaluate", "--model", str(run_dir), "--store", str(small_store), check=True).returncode == 0


def test_bad_own_models_are_refused_in_one_line_with_no_run_folder(small_store, models_py, tmp_path):
    import keras

    from augzarr.trainer.training import train_run

    bad_py = tmp_path / "broken.py"
    bad_py.write_text("def tiny(image_shape, n_classes:\n")
    not_keras = tmp_path / "notes.keras"
    not_keras.write_text("not a zip")
    other_shape = tmp_path / "mnist.keras"
    keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    ).save(other_shape)
    cases = [
        (f"{tmp_path}/missing.py:tiny", f"no such file {tmp_path}/missing.py"),
        (f"{bad_py}:tiny", f"importing {bad_py} failed: SyntaxError"),
        (
            f"{models_py}:absent",
            f"{models_py} has no function absent (it defines compiled, logits, not_a_model, raises, tiny, unbuilt, with_custom_layer, wrong_shape)",
        ),
        (f"{models_py}:SIZE", f"SIZE in {models_py} is an int, not a function"),
        (f"{models_py}:raises", "raises((16, 16, 3), 3) raised RuntimeError: no weights for (16, 16, 3)"),
        (f"{models_py}:not_a_model", "not_a_model((16, 16, 3), 3) returned a str, not a keras.Model"),
        (
            f"{models_py}:wrong_shape",
            "wrong_shape() returned a model that takes 8x8x3 images into 5 classes, the store holds 16x16x3 images of 3 classes",
        ),
        (
            f"{models_py}:logits",
            'outputs raw scores (linear activation), but train\'s loss takes class probabilities: end the model with activation="softmax"',
        ),
        (str(not_keras), "not a .keras file (the zip archive"),
        (
            str(other_shape),
            "mnist.keras takes 28x28x1 images into 10 classes, the store holds 16x16x3 images of 3 classes",
        ),
        (f"{tmp_path}/gone.keras", "no such file"),
    ]
    for spec, match in cases:
        with pytest.raises(UserError) as caught:
            train_run(
                {"store": str(small_store), "model": spec, "epochs": 1},
                out=tmp_path / "never",
                verbose=0,
                say=lambda _: None,
            )
        message = str(caught.value)
        assert message.startswith(f"--model {spec}") and match in message and "\n" not in message, message
        assert not (tmp_path / "never").exists(), spec

    cli = train(small_store, str(other_shape), tmp_path / "never", check=False)
    assert cli.returncode == 1 and not (tmp_path / "never").exists()
    assert cli.stderr.strip() == (
        f"train: error: --model {other_shape} takes 28x28x1 images into 10 classes, the store holds 16x16x3 "
        "images of 3 classes: train it for this store's images and classes, or build a store of its shape (build-aug --image-size)"
    )
    for spec, message in [
        (
            str(models_py),
            f"--model {models_py}: name the function in it that builds the model, as {models_py}:FUNCTION",
        ),
        (
            "resnet",
            "--model must be one of deep, shallow, mobilenet_v3_small, efficientnet_v2_b0, or your own as "
            "PATH.py:FUNCTION or PATH.keras",
        ),
    ]:
        cli = train(small_store, spec, tmp_path / "never", check=False)
        assert cli.returncode == 2 and cli.stderr.strip() == f"train: error: {message}"
    cli = train(small_store, f"{models_py}:tiny", tmp_path / "never", "--keras-augment", "crop-flip", check=False)
    assert cli.returncode == 2 and "--keras-augment puts its layers into the built-in models only" in cli.stderr
    assert not (tmp_path / "never").exists()


ANY_SIZE_PY = '''
import keras


def any_size(image_shape, n_classes):
    """The README's "a dimension left None takes any size": a fully convolutional model."""
    return keras.Sequential([keras.Input((None, None, image_shape[2]), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(n_classes, activation="softmax")], name="any_size")


def grey_any_size(image_shape, n_classes):
    return any_size((None, None, 1), n_classes)
'''


def test_a_model_that_takes_any_size_trains_resumes_and_evaluates(small_store, tmp_path):
    """Issue #21 point 5: Input((None, None, 3)) passed the own-model check, then a second, strict check refused it
    after the run folder was claimed. Now train (and the same command again after an interruption), evaluate
    --store and evaluate --source take it; the image folder is resized to the store's images it was trained on."""
    from augzarr.trainer.training import train_run

    models_py = tmp_path / "any.py"
    models_py.write_text(ANY_SIZE_PY)
    with pytest.raises(
        UserError,
        match=r"grey_any_size\(\) returned a model that takes \?x\?x1 images into 3 classes, the store holds 16x16x3",
    ):
        train_run(
            {"store": str(small_store), "model": f"{models_py}:grey_any_size", "epochs": 1},
            out=tmp_path / "never",
            verbose=0,
            say=lambda _: None,
        )
    assert not (tmp_path / "never").exists()  # None takes any size, not any channel count
    run_dir = tmp_path / "run"
    given = {"store": str(small_store), "model": f"{models_py}:any_size", "epochs": 1, "batch_size": 16}
    train_run(given, out=run_dir, verbose=0, say=lambda _: None)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete" and run["model"]["name"] == "any_size"
    (run_dir / "run.json").write_text(json.dumps({**run, "status": "running"}))  # as if stopped before its reports
    said = []
    assert (
        train_run(given, out=run_dir, verbose=0, say=said.append).resumed_from == 1
    )  # the checkpoint's model is checked too
    assert run_cli("evaluate", "--model", str(run_dir), "--store", str(small_store), check=True).returncode == 0
    photos = write_image_folder(tmp_path / "photos", {"ant": 2, "bee": 2, "cow": 2}, size=20)
    on_folder = run_cli("evaluate", "--model", str(run_dir), "--source", str(photos), check=True)
    assert "resized 6 images from 20x20 to the model's 16x16" in on_folder.stdout


def test_train_and_evaluate_check_a_model_against_a_store_by_one_rule(small_store):
    """One rule (own_model.check_shapes) for train's own-model check, the check of every model train fits, and
    evaluate's: a dimension left None takes any size; rank, a fixed size, channels and classes must match."""
    import keras

    from augzarr.store_format import open_store
    from augzarr.trainer.training import check_model_fits_store

    attrs = open_store(small_store).attrs  # 16x16x3 images of 3 classes

    def model(shape, classes=3):
        return keras.Sequential(
            [
                keras.Input(shape),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(classes, activation="softmax"),
            ]
        )

    for fits in ((None, None, 3), (16, None, 3), (16, 16, 3)):
        check_model_fits_store(model(fits), attrs, "the model")
    for shape, classes, takes in (
        ((None, None, 1), 3, "?x?x1 images into 3 classes"),
        ((8, None, 3), 3, "8x?x3 images into 3 classes"),
        ((16, 16, 3), 4, "16x16x3 images into 4 classes"),
    ):
        with pytest.raises(UserError) as caught:
            check_model_fits_store(model(shape, classes), attrs, "the model of runs/r")
        assert str(caught.value).startswith(
            f"the model of runs/r takes {takes}, the store holds 16x16x3 images of 3 classes: "
        )


def test_resume_refuses_a_python_file_changed_before_the_first_epoch(small_store, tmp_path):
    """A run stopped before its first epoch is rebuilt from the file on --resume: not from a different file."""
    from augzarr.trainer.training import train_run

    path = tmp_path / "net.py"
    path.write_text(MODELS_PY)
    run_dir = tmp_path / "run"
    train_here(small_store, f"{path}:tiny", run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(
        json.dumps({**run, "status": "running"})
    )  # as if killed before epoch 1 had finished
    for leftover in (run_dir / "state").iterdir():
        leftover.unlink()
    path.write_text(
        MODELS_PY
        + textwrap.dedent("""
        def tiny(image_shape, n_classes):
            return with_custom_layer(image_shape, n_classes)
    """)
    )
    with pytest.raises(UserError, match=f"--resume: {path.resolve()} has changed since {run_dir} started"):
        train_run({}, out=run_dir, resume=True, verbose=0, say=lambda _: None)
