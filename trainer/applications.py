"""train's keras.applications models (--model mobilenet_v3_small, efficientnet_v2_b0) for photos at real sizes: which
they are, how each is built for a store, and where their ImageNet weights come from.

Each is the application without its top (include_top=False, global average pooling) with its own preprocessing inside
(include_preprocessing: batches stay uint8 up to the model), then Dropout(0.2) and a softmax over the store's classes,
as Keras' transfer-learning guide builds it. A one-channel store's images are repeated to three channels first.

--weights none: trained from scratch. imagenet: the very file keras.applications loads (its no-top weights), read from
Keras' cache (KERAS_HOME/models, ~/.keras/models by default) and downloaded into it where there is a network, as Keras
does; offline without it, one line names the file and where to put it. PATH: such a file kept elsewhere, or one
written by backbone.save_weights (NAME.weights.h5). Pretrained, the backbone runs in inference mode
(backbone(x, training=False), as the guide does), so its BatchNormalization statistics stay ImageNet's while the head
trains and while it is fine-tuned.

Keras is imported inside the functions only: options.py reads the registry before Keras loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from augzarr.errors import OptionError, UserError


@dataclass(frozen=True)
class Application:
    about: str  # for --help and the docs
    keras_name: str  # the keras.applications function
    backbone: str  # the name Keras gives the model it returns (its weight file's name is made from it)
    weights_file: str  # Keras' name of its no-top ImageNet weights, in Keras' cache and at weights_url
    weights_url: str
    weights_md5: str  # Keras' published hash of that file (keras.utils.get_file checks a download against it)

    @property
    def url(self) -> str:
        return self.weights_url + self.weights_file


APPLICATIONS = {
    "mobilenet_v3_small": Application(
        "keras.applications.MobileNetV3Small, 0.9M weights: 224-px photos on a CPU",
        "MobileNetV3Small",
        "MobileNetV3Small",
        "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
    "efficientnet_v2_b0": Application(
        "keras.applications.EfficientNetV2B0, 5.9M weights: more accurate, best on a GPU",
        "EfficientNetV2B0",
        "efficientnetv2-b0",
        "efficientnetv2-b0_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/",
        "893217f2bb855e2983157299931e43ff",
    ),
}
WEIGHTS = {  # train --weights, besides a PATH
    "none": "trained from scratch",
    "imagenet": "the ImageNet weights Keras publishes, from its cache (KERAS_HOME/models), downloaded where there is a network",
}
MIN_SIDE = 32  # the smallest image keras.applications builds these for
HEAD_DROPOUT = 0.2  # before the new classifier, as Keras' transfer-learning guide has it
FINE_TUNE_RATE_FACTOR = (
    0.01  # fine-tuning after --freeze-epochs runs at this share of the rate: the guide's 1e-5 after Adam's 1e-3
)


def check_weights_value(value: str, label: str) -> None:
    """none, imagenet, or a path to an HDF5 weights file (Keras reads the format from the name)."""
    if value not in WEIGHTS and not value.endswith(".h5"):
        raise OptionError(
            f"{label} must be {' or '.join(WEIGHTS)}, or the path of a weights file ending in .h5, not {value!r}"
        )


def check_image_shape(name: str, image_shape: tuple[int, ...]) -> None:
    height, width = image_shape[:2]
    if min(height, width) < MIN_SIDE:
        raise UserError(
            f"--model {name} takes images of at least {MIN_SIDE}x{MIN_SIDE}, the store holds {height}x{width}: "
            f"build one with build-aug --image-size {MIN_SIDE} or more, or use --model deep"
        )


def application_model(name: str, image_shape: tuple[int, ...], n_classes: int, augment: list, pretrained: bool):
    """The application's backbone (random weights: load_weights puts pretrained ones in) under a new classifier."""
    import keras
    from keras import layers

    check_image_shape(name, image_shape)
    app = APPLICATIONS[name]
    inputs = keras.Input(shape=image_shape, dtype="uint8")
    x = inputs
    for layer in augment:
        x = layer(x)
    if image_shape[-1] == 1:  # the backbones take three channels (and their ImageNet weights expect them)
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    backbone = getattr(keras.applications, app.keras_name)(
        include_top=False, weights=None, input_shape=(*image_shape[:2], 3), pooling="avg"
    )
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = layers.Dropout(HEAD_DROPOUT)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def backbone_of(model):
    """The application inside a model application_model built (or loaded from its checkpoint); None for any other."""
    app = APPLICATIONS.get(model.name)
    if app is None:
        return None
    return next((layer for layer in model.layers if layer.name == app.backbone), None)


def keras_cache_dir() -> Path:
    """Where keras.utils.get_file keeps keras.applications' weights: KERAS_HOME/models (~/.keras/models by default),
    or /tmp/.keras/models where that is not writable, as Keras decides it (here from the environment as it is now)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    with contextlib.suppress(OSError):
        os.makedirs(home, exist_ok=True)
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(home) / "models"


@dataclass(frozen=True)
class WeightsFile:
    """The weights a run started from, for run.json and the model card."""

    path: Path
    url: str | None  # imagenet: where Keras publishes the file
    downloaded: bool  # imagenet: fetched into Keras' cache by this run
    sha256: str
    published: bool  # the file Keras publishes (its md5 is Keras' own)


def imagenet_weights_path(name: str) -> tuple[Path, bool]:
    """(the file in Keras' cache, whether this call downloaded it). Offline without it: one line naming it."""
    import keras

    app = APPLICATIONS[name]
    folder = keras_cache_dir()
    path = folder / app.weights_file
    if path.is_file():
        return path, False
    try:
        fetched = keras.utils.get_file(
            app.weights_file, app.url, cache_subdir=folder.name, cache_dir=str(folder.parent), file_hash=app.weights_md5
        )
    except Exception as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(
            f"--weights imagenet: {app.weights_file} is not in Keras' cache {folder} and could not be downloaded "
            f"({reason}); fetch {app.url} where there is a network and put it in {folder} (set KERAS_HOME to use "
            "another cache), or give it with --weights PATH"
        ) from None
    return Path(fetched), True


def hashes(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, read once."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def load_weights(model, name: str, weights: str) -> WeightsFile:
    """--weights imagenet or PATH into the backbone of `model` (application_model's); what was loaded."""
    app = APPLICATIONS[name]
    if weights == "imagenet":
        path, downloaded = imagenet_weights_path(name)
        url = app.url
    else:
        path, downloaded, url = Path(weights), False, None
        if not path.is_file():
            raise UserError(f"--weights {weights}: no such file")
    sha256, md5 = hashes(path)
    try:
        backbone_of(model).load_weights(str(path))
    except Exception as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(
            f"--weights {weights}: Keras cannot load {path} into {app.keras_name} ({reason[:300]}); give its no-top "
            f"weights ({app.weights_file}, from {app.url}) or a file its backbone.save_weights wrote"
        ) from None
    return WeightsFile(path.resolve(), url, downloaded, sha256, md5 == app.weights_md5)
