"""The notebook's two CNNs in Keras 3, sized from the store (input shape, class count).

Both start with a Rescaling layer, so batches stay uint8 all the way to the model.
"""

from __future__ import annotations

import keras
from keras import layers


def uint8_input(image_shape: tuple[int, int, int]) -> list:
    """Batches arrive as uint8 and are scaled to [0, 1] inside the model."""
    return [keras.Input(shape=image_shape, dtype="uint8"), layers.Rescaling(1 / 255)]


def classifier(n_classes: int) -> list:
    """Both networks end the same way: Flatten, Dense512, Dropout(0.5), softmax."""
    return [
        layers.Flatten(),
        layers.Dense(512, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(n_classes, activation="softmax"),
    ]


def shallow(image_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """The notebook's first network: one 3x3 convolution, pooling, a dense layer."""
    return keras.Sequential([
        *uint8_input(image_shape),
        layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Dropout(0.25),
        *classifier(n_classes),
    ], name="shallow")


def deep(image_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    """The notebook's second network. Its fourth convolution read Conv2D(64, 3, 3), which
    Keras 2 takes as a 3x3 kernel with stride 3 (a Keras 1 port bug); here it is the
    intended 3x3 kernel with stride 1, with the line's default 'valid' padding."""
    return keras.Sequential([
        *uint8_input(image_shape),
        layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
        layers.Conv2D(32, (3, 3), padding="same", activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Dropout(0.25),
        layers.Conv2D(64, (3, 3), padding="same", activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Dropout(0.25),
        *classifier(n_classes),
    ], name="deep")


def build_model(name: str, image_shape: tuple[int, int, int], n_classes: int) -> keras.Model:
    return {"deep": deep, "shallow": shallow}[name](tuple(image_shape), n_classes)
