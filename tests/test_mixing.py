"""Issue #12: train --mix mixup|cutmix (point 2), in the stream, seeded by (seed, epoch, batch), soft labels
for training and accuracy against the hard labels; and train --keras-augment, the online anchor of point 4."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from augzarr.store_format import open_store
from augzarr.trainer.mixing import BatchMix


@pytest.fixture
def store(small_store):
    return small_store


def batch(n: int = 32):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, n)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_batches_are_seeded_and_their_labels_are_the_shares_of_each_image(kind):
    images, labels = batch()
    mix = BatchMix(kind, 1.0, 3, seed=5)
    mixed, soft = mix(images, labels, epoch=1, batch=4)
    again, soft_again = BatchMix(kind, 1.0, 3, seed=5)(images, labels, 1, 4)
    assert np.array_equal(mixed, again) and np.array_equal(soft, soft_again)
    assert not np.array_equal(mixed, mix(images, labels, 1, 5)[0])
    assert (
        mixed.dtype == np.uint8 and mixed.shape == images.shape and soft.dtype == np.float32 and soft.shape == (32, 3)
    )
    np.testing.assert_allclose(soft.sum(axis=1), 1, rtol=1e-6)
    partner = np.random.default_rng([5, 1, 4, 0x0313]).permutation(32)  # the partners the mix drew
    for i in range(32):
        own = soft[i, labels[i]] if labels[i] != labels[partner[i]] else None
        if kind == "cutmix":  # each pixel is its own image's or its partner's, in the label's shares
            from_partner = (mixed[i] != images[i]).any(axis=-1)
            assert np.array_equal(mixed[i][from_partner], images[partner[i]][from_partner])
            if (
                own is not None
            ):  # (random pixels: one equal to its partner's in all three channels is a 1 in 2^24 event)
                assert own == pytest.approx(1 - from_partner.mean(), abs=1e-6)
        elif own is not None:  # every pixel the label's blend of the two images, rounded
            expected = own * images[i].astype(float) + (1 - own) * images[partner[i]]
            assert np.abs(mixed[i] - expected).max() <= 0.5 + 1e-4


def test_training_streams_mix_and_validation_streams_give_hard_one_hot_labels(store):
    from augzarr.trainer.stream import StoreStream

    opened = open_store(store)
    mix = BatchMix("cutmix", 1.0, 3, seed=2)
    train = StoreStream(opened, "train", batch_size=8, shuffle=True, seed=2, mix=mix)
    plain = StoreStream(opened, "train", batch_size=8, shuffle=True, seed=2)
    val = StoreStream(opened, "val", batch_size=8, shuffle=False, soft_labels=True)
    try:
        x, y = train[3]
        px, py = plain[3]
        expected = mix(px, py, 0, 3)
        assert np.array_equal(x, expected[0]) and np.array_equal(y, expected[1])
        vx, vy = val[0]
        assert np.array_equal(vy, np.eye(3, dtype=np.float32)[opened.labels("val")[: len(vy)]])
    finally:
        for stream in (train, plain, val):
            stream.close()


def test_train_with_a_mix_reports_accuracy_on_hard_labels(store, tmp_path):
    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "run"  # trained in this process (Keras loads once); the command line's refusals below
    train_run(
        {"store": str(store), "epochs": 1, "model": "shallow", "batch_size": 16, "mix": "mixup"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["options"]["mix"] == "mixup" and run["mix_alpha"] == 0.2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    confusion = np.array(metrics["confusion_matrix"])
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())  # hard labels, whole images
    assert "batch mixing mixup alpha 0.2" in (run_dir / "model_card.md").read_text()
    bad = run_cli("train", "--store", str(store), "--mix-alpha", "0.5", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip() == "train: error: --mix-alpha needs --mix mixup or --mix cutmix"
    bad = run_cli("train", "--store", str(store), "--mix", "blend", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip() == "train: error: --mix must be one of mixup, cutmix"


def test_keras_augmentation_layers_train_and_are_recorded(store, tmp_path):
    """The anchor users would pick instead of stored copies: Keras 3's preprocessing layers in the model."""
    import keras

    from augzarr.trainer.training import train_run

    run_dir = tmp_path / "keras"
    train_run(
        {"store": str(store), "epochs": 1, "model": "shallow", "batch_size": 16, "keras_augment": "randaugment"},
        out=run_dir,
        verbose=0,
        say=lambda _: None,
    )
    model = keras.models.load_model(run_dir / "model.keras")
    assert [type(layer).__name__ for layer in model.layers[:4]] == [
        "RandAugment",
        "RandomTranslation",
        "RandomFlip",
        "Rescaling",
    ]
    images = open_store(store).images("val")[:4]
    assert np.array_equal(model(images, training=False), model(images, training=False))  # identity when predicting
    assert not np.array_equal(model.layers[0](images, training=True), images)  # augmenting while training
    assert json.loads((run_dir / "run.json").read_text())["options"]["keras_augment"] == "randaugment"
    assert "Keras augmentation layers randaugment" in (run_dir / "model_card.md").read_text()
