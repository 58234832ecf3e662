"""--source NAME: a dataset of keras.datasets (CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST), read from Keras' cache in
the dataset's official format, or downloaded by its load_data() when it is not there. KERAS_DATASETS is the one list."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from augzarr.errors import UserError
from augzarr.wording import count

from .base import OpenRequest, Source, SourceKind, Split, check_label_mode, register

# Fixed by the dataset (the official archive's batches.meta holds the same list);
# Keras' load_data() returns labels only.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# Fixed by the datasets (CIFAR-100's meta file holds the same lists, in label order); load_data()
# returns labels only.
CIFAR100_FINE_CLASSES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]
CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test, as load_data()


@dataclass(frozen=True)
class KerasDataset:
    """A dataset of keras.datasets, as --source NAME reads it; KERAS_DATASETS below is the one list."""

    title: str  # in messages
    class_names: dict[str | None, list[str]]  # label mode (None where the dataset has one set of labels) -> names
    cache_files: tuple[str, ...]  # where Keras 3's load_data() keeps the download, relative to its cache's root
    read_cache: Callable[[list[Path], str | None], Arrays]  # those files, in the dataset's official format
    advice: str  # offline with nothing cached: what to do instead
    label_modes: tuple[str, ...] = ()  # load_data(label_mode=...) values; the first is the default


def read_cifar_archive(member_dir: str, label_key: str, title: str) -> Callable[[list[Path], str | None], Arrays]:
    """The official CIFAR python archive (as Keras caches it, unextracted): train and test batches."""

    def read(files: list[Path], label_mode: str | None) -> Arrays:
        from .cifar_pickle import (  # here: the kinds register in the order sources/ imports them
            decode_batch,
            unpickle_batch,
        )

        members = read_tar_members(
            files[0],
            {
                "train",
                "test",
                "data_batch_1",
                "data_batch_2",
                "data_batch_3",
                "data_batch_4",
                "data_batch_5",
                "test_batch",
            },
            member_dir,
        )
        key = label_key.format(mode=label_mode).encode()
        train_names = ["train"] if "train" in members else sorted(n for n in members if n.startswith("data_batch_"))
        test_names = ["test"] if "test" in members else ["test_batch"]
        missing = [n for n in [*train_names, *test_names] if n not in members]
        if not train_names or missing:
            raise UserError(f"{files[0]}: {', '.join(missing) or 'the training batches'} missing from the archive")

        def images_and_labels(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
            parts = [
                decode_batch(unpickle_batch(members[n], n, str(files[0]), title), n, str(files[0]), key, title)
                for n in names
            ]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        return (*images_and_labels(train_names), *images_and_labels(test_names))

    return read


def read_tar_members(path: Path, names: set[str], folder: str) -> dict[str, bytes]:
    """name -> bytes of the archive's files folder/<name>."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                parent, _, name = member.name.rpartition("/")
                if member.isfile() and name in names and parent.endswith(folder):
                    if (file := archive.extractfile(member)) is not None:
                        members[name] = file.read()
    except Exception as exc:  # whatever a damaged archive raises (ReadError, EOFError, zlib.error, ...)
        raise UserError(f"{path}: cannot read the archive ({exc})") from exc
    return members


def read_mnist_npz(files: list[Path], label_mode: str | None) -> Arrays:
    try:
        with np.load(files[0], allow_pickle=False) as f:  # as Keras reads it: arrays only, never pickled objects
            return f["x_train"][..., None], f["y_train"], f["x_test"][..., None], f["y_test"]
    except Exception as exc:  # whatever a damaged file raises (BadZipFile, zlib.error, KeyError, ...)
        raise UserError(f"{files[0]}: not MNIST's mnist.npz with x_train, y_train, x_test, y_test ({exc})") from exc


IDX_LABELS, IDX_IMAGES = bytes([0, 0, 8, 1]), bytes([0, 0, 8, 3])  # unsigned bytes, 1 and 3 dimensions


def read_idx_gz(files: list[Path], label_mode: str | None) -> Arrays:
    """Fashion-MNIST's four gzipped IDX files (train labels, train images, test labels, test images)."""
    arrays = []
    for path, magic in zip(files, (IDX_LABELS, IDX_IMAGES, IDX_LABELS, IDX_IMAGES)):
        try:
            with gzip.open(path, "rb") as f:
                data = f.read()
        except Exception as exc:  # whatever a damaged file raises (BadGzipFile, EOFError, zlib.error, ...)
            raise UserError(f"{path}: not a gzipped IDX file ({exc})") from exc
        if data[:4] != magic:
            raise UserError(
                f"{path}: not an IDX file of {'labels' if magic == IDX_LABELS else 'images'} (it starts {data[:4].hex()}, not {magic.hex()})"
            )
        arrays.append(np.frombuffer(data, np.uint8, offset=8 if magic == IDX_LABELS else 16))
    (y_train, x_train, y_test, x_test), shaped = arrays, []
    for path, images, labels in ((files[1], x_train, y_train), (files[3], x_test, y_test)):
        if images.size != len(labels) * 28 * 28:
            raise UserError(
                f"{path}: {count(images.size, 'pixel byte')}, not {count(len(labels), 'image')} of 28x28 as its labels file says"
            )
        shaped.append(images.reshape(len(labels), 28, 28, 1))
    return shaped[0], y_train, shaped[1], y_test


KERAS_FILES = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
FASHION_FILES = (
    "train-labels-idx1-ubyte.gz",
    "train-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
)

# --source NAME: every dataset of keras.datasets that build-aug reads (the key is the keras.datasets module)
KERAS_DATASETS: dict[str, KerasDataset] = {
    "cifar10": KerasDataset(
        title="CIFAR-10",
        class_names={None: CIFAR10_CLASSES},
        cache_files=("datasets/cifar-10-batches-py-target_archive",),
        read_cache=read_cifar_archive("cifar-10-batches-py", "labels", "CIFAR-10"),
        advice="download cifar-10-python.tar.gz yourself and pass --source /path/to/cifar-10-python.tar.gz (or --source an image folder)",
    ),
    "cifar100": KerasDataset(
        title="CIFAR-100",
        class_names={"fine": CIFAR100_FINE_CLASSES, "coarse": CIFAR100_COARSE_CLASSES},
        cache_files=("datasets/cifar-100-python-target_archive",),
        read_cache=read_cifar_archive("cifar-100-python", "{mode}_labels", "CIFAR-100"),
        advice="download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz yourself and save it as {files}",
        label_modes=("fine", "coarse"),
    ),
    "mnist": KerasDataset(
        title="MNIST",
        class_names={None: MNIST_CLASSES},
        cache_files=("datasets/mnist.npz",),
        read_cache=read_mnist_npz,
        advice=f"download {KERAS_FILES}/mnist.npz yourself and save it as {{files}}",
    ),
    "fashion_mnist": KerasDataset(
        title="Fashion-MNIST",
        class_names={None: FASHION_MNIST_CLASSES},
        cache_files=tuple(f"datasets/fashion-mnist/{name}" for name in FASHION_FILES),
        read_cache=read_idx_gz,
        advice=f"download {', '.join(FASHION_FILES)} from {KERAS_FILES}/ yourself and save them in {{folder}}",
    ),
}


def keras_home() -> Path:
    """The root of Keras' cache, as keras.utils.get_file computes it."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()


def keras_cache_dir() -> Path:
    """Keras' dataset cache, as keras.utils.get_file computes it."""
    return keras_home() / "datasets"


@register
class KerasDatasetsKind(SourceKind):
    described = f"{', '.join(KERAS_DATASETS)} (keras.datasets)"

    def claims(self, spec: str) -> bool:
        return spec in KERAS_DATASETS

    def open(self, spec: str, request: OpenRequest) -> Source:
        return load_keras_dataset(spec, request.label_mode)

    def label_modes(self) -> dict[str, tuple[str, ...]]:
        return {name: dataset.label_modes for name, dataset in KERAS_DATASETS.items() if dataset.label_modes}


def load_keras_dataset(name: str, label_mode: str | None = None) -> Source:
    """--source NAME: the files Keras' cache holds, read in the dataset's official format, or, when
    they are not there, keras.datasets.NAME.load_data(), which downloads them into the cache.

    Cached files are read here, not through load_data(): Keras re-checks a cached file against the
    official download's hash and, offline, deletes a file that fails it; it also re-extracts a CIFAR
    archive on every call."""
    dataset = KERAS_DATASETS[name]
    check_label_mode(name, label_mode)
    if dataset.label_modes:
        label_mode = label_mode or dataset.label_modes[0]
    files = [keras_home() / file for file in dataset.cache_files]
    if all(file.is_file() for file in files):
        try:
            x_train, y_train, x_test, y_test = dataset.read_cache(files, label_mode)
        except UserError as exc:
            raise UserError(
                f"--source {name}: Keras' cached {dataset.title} cannot be read: {exc}; "
                "delete that file to let Keras download it again"
            ) from exc
    else:
        x_train, y_train, x_test, y_test = download_keras_dataset(name, dataset, files, label_mode)
    class_names = list(dataset.class_names[label_mode])
    for split_name, images in (("training", x_train), ("test", x_test)):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(
                f"--source {name}: its {split_name} images are {images.dtype} {list(images.shape)}, not uint8 [n, H, W, C]"
            )
    train = Split(labels=np.asarray(y_train).reshape(-1).astype(np.int64), images=np.ascontiguousarray(x_train))
    test = Split(labels=np.asarray(y_test).reshape(-1).astype(np.int64), images=np.ascontiguousarray(x_test))
    for split_name, split, images in (("training", train, x_train), ("test", test, x_test)):
        if len(images) != len(split.labels):
            raise UserError(
                f"--source {name}: {count(len(images), split_name + ' image')} but {count(len(split.labels), 'label')}"
            )
        if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            bad = int(split.labels.min() if split.labels.min() < 0 else split.labels.max())
            raise UserError(
                f"--source {name}: {split_name} label {bad} is outside {dataset.title}'s {len(class_names)} classes"
            )
    return Source(
        kind=f"keras-{name}",
        location=f"keras.datasets.{name}" + (f" (label_mode={label_mode})" if dataset.label_modes else ""),
        class_names=class_names,
        image_shape=(x_train.shape[1], x_train.shape[2], x_train.shape[3]),
        train=train,
        test=test,
    )


def download_keras_dataset(name: str, dataset: KerasDataset, files: list[Path], label_mode: str | None) -> Arrays:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    import importlib

    from augzarr.images import native_stderr_silenced

    try:
        # TensorFlow's C++ start-up lines (absl, oneDNN) go to the process's stderr: kept off the terminal
        with native_stderr_silenced(), announcement_held():
            loader = importlib.import_module(f"keras.datasets.{name}")
            (x_train, y_train), (x_test, y_test) = loader.load_data(
                **({"label_mode": label_mode} if dataset.label_modes else {})
            )
    except ImportError:
        raise
    except Exception as exc:  # Keras raises a bare Exception for a failed download
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        advice = dataset.advice.format(files=files[0], folder=files[0].parent)
        raise UserError(
            f"{dataset.title} is not in Keras' cache ({keras_cache_dir()}) and could not be downloaded ({reason}); "
            f"connect once to let Keras download it, or {advice}"
        ) from exc
    if x_train.ndim == 3:  # grayscale datasets come without a channel axis
        x_train, x_test = x_train[..., None], x_test[..., None]
    return x_train, y_train, x_test, y_test


@contextlib.contextmanager
def announcement_held():
    """stdout while load_data() runs: Keras' "Downloading data from URL" line is held back until the download
    shows progress (or succeeds), so a download that cannot start leaves augzarr's one-line error as the only line."""
    held = HeldAnnouncement(sys.stdout)
    with contextlib.redirect_stdout(held):
        yield
    held.release()


class HeldAnnouncement(io.TextIOBase):
    def __init__(self, out) -> None:
        self.out, self.held = out, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.held and text.startswith("Downloading data from"):
            self.held = text
            return len(text)
        self.release()
        return self.out.write(text)

    def release(self) -> None:
        if self.held:
            self.out.write(self.held)
            self.held = ""

    def flush(self) -> None:
        self.out.flush()
