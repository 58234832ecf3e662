"""train's built-in models, sized from the store (input shape, class count): the notebook's two CNNs in Keras 3, for
small images, and the keras.applications models for photos (applications.py).

Each takes uint8 batches: the notebook's start with a Rescaling layer, the applications with their own preprocessing.
"""

from __future__ import annotations

import keras
from keras import layers

from augzarr.errors import UserError

from .applications import APPLICATIONS, application_model
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


def mobilenet_v3_small(
    image_shape: tuple[int, int, int], n_classes: int, augment: list, pretrained: bool = False
) -> keras.Model:
    """keras.applications.MobileNetV3Small without its ImageNet top (0.9M weights), its own preprocessing inside,
    then Dropout(0.2) and a softmax: photos at 224 px on a CPU. From scratch, or from ImageNet with --weights."""
    return application_model("mobilenet_v3_small", image_shape, n_classes, augment, pretrained)


def efficientnet_v2_b0(
    image_shape: tuple[int, int, int], n_classes: int, augment: list, pretrained: bool = False
) -> keras.Model:
    """keras.applications.EfficientNetV2B0 without its ImageNet top (5.9M weights), its own preprocessing inside,
    then Dropout(0.2) and a softmax: more accurate than MobileNetV3-Small, best on a GPU. From scratch, or from
    ImageNet with --weights."""
    return application_model("efficientnet_v2_b0", image_shape, n_classes, augment, pretrained)


MAX_NOTEBOOK_PIXELS = 64 * 64  # CIFAR's 32 px twice over: beyond, their Dense(512) on the flat features grows past use


def notebook_dense_weights(name: str, image_shape: tuple[int, ...]) -> int:
    """The weights of the Dense(512) layer that deep or shallow puts on its flattened features, for these images."""
    height, width = image_shape[:2]
    if name == "deep":  # two 2x poolings around a 'valid' 3x3 convolution, 64 channels
        return ((height // 2 - 2) // 2) * ((width // 2 - 2) // 2) * 64 * 512
    return (height // 2) * (width // 2) * 32 * 512


def check_notebook_model_fits(name: str, image_shape: tuple[int, ...]) -> None:
    """deep and shallow were made for 32x32 images: on photos (a 224-px store) the Dense(512) on their flattened
    features holds ~100M weights and trains at chance for hours; refused, naming the models that fit."""
    height, width = image_shape[:2]
    if height * width > MAX_NOTEBOOK_PIXELS:
        raise UserError(
            f"--model {name}: the notebook's CNN is for small images (up to 64x64); on the store's {height}x{width} its "
            f"Dense(512) would hold {notebook_dense_weights(name, image_shape):,} weights and train at chance: use "
            f"--model {' or '.join(APPLICATIONS)} (keras.applications, add --weights imagenet to start from ImageNet), "
            "or your own --model PATH.py:FUNCTION"
        )


def build_model(
    name: str,
    image_shape: tuple[int, int, int],
    n_classes: int,
    keras_augment: str = "",
    seed: int = 0,
    pretrained: bool = False,
) -> keras.Model:
    """name: one of options.MODELS. pretrained: an application whose weights load_weights will put in (applications.py)."""
    augment = keras_augment_layers(keras_augment, seed)
    if name in APPLICATIONS:
        return BUILT_IN[name](tuple(image_shape), n_classes, augment, pretrained)
    return BUILT_IN[name](tuple(image_shape), n_classes, augment)


BUILT_IN = {name: globals()[name] for name in MODELS}  # each built-in model is the function of its name above
