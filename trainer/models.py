"""The notebook's two CNNs in Keras 3, sized from the store (input shape, class count).

Both start with a Rescaling layer, so batches stay uint8 all the way to the model.
"""

from __future__ import annotations

import keras
from keras import layers

from .options import MODELS


def keras_augment_layers(name: str, seed: int) -> list:
    """train --keras-augment: online augmentation with Keras 3's own preprocessing layers, the anchor a
    user would otherwise pick (active in training only; identity when predicting). crop-flip as far as
    Keras layers express it: a whole-pixel translation by up to 1/8 of the side filled with black, and a
    horizontal flip; randaugment: keras.layers.RandAugment (2 operations, factor 0.5) before those."""
    if not name:
        return []
    crop_flip = [
        layers.RandomTranslation(1 / 8, 1 / 8, fill_mode="constant", interpolation="nearest", seed=seed),
        layers.RandomFlip("horizontal", seed=seed + 1),
    ]
    if name == "crop-flip":
        return crop_flip
    return [layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed + 2), *crop_flip]


def uint8_input(image_shape: tuple[int, int, int], augment: list) -> list:
    """Batches arrive as uint8 and are scaled to [0, 1] inside the model (after any augmentation layers, which work on 0-255)."""
    return [keras.Input(shape=image_shape, dtype="uint8"), *augment, layers.Rescaling(1 / 255)]


def classifier(n_classes: int) -> list:
    """Both networks end the same way: Flatten, Dense512, Dropout(0.5), softmax."""
    return [
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(n_classes, activation="softmax"),
    ]


def shallow(image_shape: tuple[int, int, int], n_classes: int, augment: list) -> keras.Model:
    """The notebook's first network: Conv32-MaxPool-Dropout .25-Dense512-Dropout .5-softmax."""
    return keras.Sequential(
        [
            *uint8_input(image_shape, augment),
            layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Dropout(0.25),
            *classifier(n_classes),
        ],
        name="shallow",
    )


def deep(image_shape: tuple[int, int, int], n_classes: int, augment: list) -> keras.Model:
    """The notebook's second network: Conv32-Conv32-MaxPool-Dropout .25-Conv64-Conv64-MaxPool-Dropout
    .25-Dense512-Dropout .5-softmax, with its `Conv2D(64, 3, 3)` port bug corrected to a 3x3 kernel with stride 1.

    Its fourth convolution read Conv2D(64, 3, 3), which Keras 2 takes as a 3x3 kernel with stride 3 (a Keras 1
    port bug); here it is the intended 3x3 kernel with stride 1, with the line's default 'valid' padding."""
    return keras.Sequential(
        [
            *uint8_input(image_shape, augment),
            layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Dropout(0.25),
            layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Dropout(0.25),
            *classifier(n_classes),
        ],
        name="deep",
    )


def build_model(
    name: str, image_shape: tuple[int, int, int], n_classes: int, keras_augment: str = "", seed: int = 0
) -> keras.Model:
    """name: one of options.MODELS."""
    return BUILT_IN[name](tuple(image_shape), n_classes, keras_augment_layers(keras_augment, seed))


BUILT_IN = {name: globals()[name] for name in MODELS}  # each built-in model is the function of its name above
