"""Where training images come from: a dataset of keras.datasets (CIFAR-10, CIFAR-100, MNIST,
Fashion-MNIST), the official CIFAR-10 pickle archive, or an image folder.

A source yields a training split, an optional test split and (image folders with a
val/ or valid/ folder) an optional validation split. Arrays sources
(CIFAR-10) arrive decoded; image folders arrive as file lists that the build's
workers decode in parallel (see build.py).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .decode import file_digest, native_stderr_silenced, resize_to, shown
from augzarr.errors import OptionError, UserError
from augzarr.wording import article, count, listed

# Fixed by the dataset (the official archive's batches.meta holds the same list);
# Keras' load_data() returns labels only.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}
# The split layout's folder names, in one place (matched ignoring case): folder name -> the
# store's split. Any other top-level folder makes a folder of classes ("flat" layout).
SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
# A folder holding one of these is a zarr store (v3, v2 group, v2 array): data, never a class of images
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
UNFINISHED_BUILD_MARKER = (".build", "build.json")  # build-aug's state before the store's zarr.json exists
EXIF_ORIENTATION = 0x0112


@dataclass
class Split:
    labels: np.ndarray  # int64 [n]
    images: np.ndarray | None = None  # uint8 [n, H, W, C] for array sources (C = 1 for MNIST's grayscale)
    files: list[Path] | None = None  # for image folders, decoded later

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    kind: str  # "keras-<dataset>" (keras-cifar10, keras-mnist, ...), "cifar10-pickle" or "image-folder"
    location: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    train: Split
    test: Split | None
    content_hash: str | None = None  # known up front for arrays, after decoding for folders
    file_digests: dict[str, list[str]] | None = None  # image folders, after decoding: each file's sha256, by split
    ignored: list[str] = field(default_factory=list)  # files and folders reported, not used
    val: Split | None = None  # an image folder's own val/ (or valid/) split: then nothing is held out of train
    layout: str | None = None  # image folders: "flat" or "split (train, ...)", the folders used


def source_splits(source: Source) -> dict[str, Split]:
    """The source's splits that exist, in the order the content hash covers them (val last, so a
    source without one hashes as it always did)."""
    named = {"train": source.train, "test": source.test, "val": source.val}
    return {name: split for name, split in named.items() if split is not None}


def open_source(spec: str, image_size: int | None = None, limit: int | None = None, exclude: dict | None = None,
                label_mode: str | None = None) -> Source:
    """Resolve --source (a keras.datasets name such as 'cifar10', or a path) into a Source.

    exclude: folders that must not be read as images even when they sit inside an image folder
    (the build's own --out), mapped to the reason to report. label_mode: CIFAR-100's fine or coarse
    labels (None: fine); refused for every other source."""
    check_label_mode(spec, label_mode)
    if spec in KERAS_DATASETS:
        source = load_keras_dataset(spec, label_mode)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"--source {spec}: no such file or folder (use {', '.join(KERAS_DATASETS)} (keras.datasets), a CIFAR-10 archive or an image folder)")
        if path.is_file():
            if not re.search(r"\.(tar\.gz|tgz|tar)$", path.name):
                raise UserError(f"--source {spec}: a file must be the official cifar-10-python.tar.gz; for images pass their folder")
            source = load_cifar10_pickle(path)
        elif find_pickle_dir(path) is not None:
            source = load_cifar10_pickle(path)
        else:
            source = scan_image_folder(path, image_size, exclude)
    if limit is not None:
        source.train = take_first(source.train, limit)
    if source.train.images is not None:
        if image_size is not None:
            source.train.images = resize_all(source.train.images, image_size)
            if source.test is not None:
                source.test.images = resize_all(source.test.images, image_size)
            source.image_shape = (image_size, image_size, source.image_shape[2])
        source.content_hash = hash_arrays(source)
    return source


def check_label_mode(spec: str, label_mode: str | None) -> None:
    """--label-mode: one of the dataset's label modes, and only for a dataset that has them."""
    dataset = KERAS_DATASETS.get(spec)
    if label_mode is None:
        return
    if dataset is None or not dataset.label_modes:
        with_modes = ", ".join(name for name, d in KERAS_DATASETS.items() if d.label_modes)
        raise OptionError(f"--label-mode applies to --source {with_modes} only, not to --source {spec}; leave it out")
    if label_mode not in dataset.label_modes:
        raise OptionError(f"--label-mode must be {' or '.join(dataset.label_modes)}, not {label_mode!r}")


def take_first(split: Split, limit: int) -> Split:
    return Split(
        labels=split.labels[:limit],
        images=None if split.images is None else split.images[:limit],
        files=None if split.files is None else split.files[:limit],
    )


def resize_all(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    # OpenCV returns a one-channel image without its channel axis: reshape keeps [n, H, W, C]
    return np.stack([resize_to(image, size, size) for image in images]).reshape(len(images), size, size, images.shape[3])


def hash_arrays(source: Source) -> str:
    digest = hashlib.sha256()
    for split in (source.train, source.test):
        if split is not None:
            digest.update(np.ascontiguousarray(split.images).data)
            digest.update(split.labels.astype("<i8").tobytes())
    return "sha256:" + digest.hexdigest()


# --- keras.datasets: Keras' cache, else its loader ----------------------------

# Fixed by the datasets (CIFAR-100's meta file holds the same lists, in label order); load_data()
# returns labels only.
CIFAR100_FINE_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]
CIFAR100_COARSE_CLASSES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
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
        members = read_tar_members(files[0], {"train", "test", "data_batch_1", "data_batch_2", "data_batch_3",
                                              "data_batch_4", "data_batch_5", "test_batch"}, member_dir)
        key = label_key.format(mode=label_mode).encode()
        train_names = ["train"] if "train" in members else sorted(n for n in members if n.startswith("data_batch_"))
        test_names = ["test"] if "test" in members else ["test_batch"]
        missing = [n for n in [*train_names, *test_names] if n not in members]
        if not train_names or missing:
            raise UserError(f"{files[0]}: {', '.join(missing) or 'the training batches'} missing from the archive")
        splits = []
        for names in (train_names, test_names):
            parts = [decode_batch(unpickle_batch(members[n], n, str(files[0]), title), n, str(files[0]), key, title) for n in names]
            splits += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
        return tuple(splits)

    return read


def read_tar_members(path: Path, names: set[str], folder: str) -> dict[str, bytes]:
    """name -> bytes of the archive's files folder/<name>."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as archive:
            for member in archive:
                parent, _, name = member.name.rpartition("/")
                if member.isfile() and name in names and parent.endswith(folder):
                    members[name] = archive.extractfile(member).read()
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
            raise UserError(f"{path}: not an IDX file of {'labels' if magic == IDX_LABELS else 'images'} (it starts {data[:4].hex()}, not {magic.hex()})")
        arrays.append(np.frombuffer(data, np.uint8, offset=8 if magic == IDX_LABELS else 16))
    (y_train, x_train, y_test, x_test), shaped = arrays, []
    for path, images, labels in ((files[1], x_train, y_train), (files[3], x_test, y_test)):
        if images.size != len(labels) * 28 * 28:
            raise UserError(f"{path}: {count(images.size, 'pixel byte')}, not {count(len(labels), 'image')} of 28x28 as its labels file says")
        shaped.append(images.reshape(len(labels), 28, 28, 1))
    return shaped[0], y_train, shaped[1], y_test


KERAS_FILES = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
FASHION_FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")

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
            raise UserError(f"--source {name}: Keras' cached {dataset.title} cannot be read: {exc}; "
                            "delete that file to let Keras download it again") from exc
    else:
        x_train, y_train, x_test, y_test = download_keras_dataset(name, dataset, files, label_mode)
    class_names = list(dataset.class_names[label_mode])
    for split_name, images in (("training", x_train), ("test", x_test)):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise UserError(f"--source {name}: its {split_name} images are {images.dtype} {list(images.shape)}, not uint8 [n, H, W, C]")
    train = Split(labels=np.asarray(y_train).reshape(-1).astype(np.int64), images=np.ascontiguousarray(x_train))
    test = Split(labels=np.asarray(y_test).reshape(-1).astype(np.int64), images=np.ascontiguousarray(x_test))
    for split_name, split in (("training", train), ("test", test)):
        if len(split.images) != len(split.labels):
            raise UserError(f"--source {name}: {count(len(split.images), split_name + ' image')} but {count(len(split.labels), 'label')}")
        if len(split.labels) and (split.labels.min() < 0 or split.labels.max() >= len(class_names)):
            bad = int(split.labels.min() if split.labels.min() < 0 else split.labels.max())
            raise UserError(f"--source {name}: {split_name} label {bad} is outside {dataset.title}'s {len(class_names)} classes")
    return Source(
        kind=f"keras-{name}",
        location=f"keras.datasets.{name}" + (f" (label_mode={label_mode})" if dataset.label_modes else ""),
        class_names=class_names,
        image_shape=tuple(train.images.shape[1:]),
        train=train,
        test=test,
    )


def download_keras_dataset(name: str, dataset: KerasDataset, files: list[Path], label_mode: str | None) -> Arrays:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    import importlib

    try:
        # TensorFlow's C++ start-up lines (absl, oneDNN) go to the process's stderr: kept off the terminal
        with native_stderr_silenced(), announcement_held():
            loader = importlib.import_module(f"keras.datasets.{name}")
            (x_train, y_train), (x_test, y_test) = loader.load_data(**({"label_mode": label_mode} if dataset.label_modes else {}))
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


# --- the official CIFAR pickle format ------------------------------------------

class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The batches are pickles: allow what numpy arrays need and nothing else, never
    arbitrary code (the same globals as Keras' own RestrictedUnpickler)."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a pickle of arrays")


def named(location: Path | str) -> str:
    """A message's subject: --source PATH, or (a str) the words given, for a file of Keras' cache."""
    return location if isinstance(location, str) else f"--source {location}"


def unpickle_batch(data: bytes, name: str, location: Path | str, title: str = "CIFAR-10") -> dict:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:
        raise UserError(f"{named(location)}: {name} is not {article(title)} pickle batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise UserError(f"{named(location)}: {name} is not {article(title)} pickle batch")
    return batch


def find_pickle_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "batches.meta").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def read_pickle_members(path: Path) -> dict[str, bytes]:
    """Map file name -> bytes for every file of the archive or folder."""
    wanted = re.compile(r"^(data_batch_\d+|test_batch|batches\.meta)$")
    members: dict[str, bytes] = {}
    if path.is_file():
        try:
            with tarfile.open(path) as archive:
                for member in archive:
                    name = Path(member.name).name
                    if member.isfile() and wanted.match(name):
                        members[name] = archive.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"--source {path}: cannot read the archive ({exc}); is it the official cifar-10-python.tar.gz?") from exc
    else:
        folder = find_pickle_dir(path)
        for file in sorted(folder.iterdir()):
            if file.is_file() and wanted.match(file.name):
                members[file.name] = file.read_bytes()
    return members


def decode_batch(batch: dict, name: str, location: Path | str, label_key: bytes = b"labels",
                 title: str = "CIFAR-10") -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{named(location)}: {name} lacks the {title} 'data'/'{label_key.decode()}' layout ({exc})") from exc
    if len(images) != len(labels):
        raise UserError(f"{named(location)}: {name} has {count(len(images), 'image')} but {count(len(labels), 'label')}")
    return np.ascontiguousarray(images), labels


def load_cifar10_pickle(path: Path) -> Source:
    members = read_pickle_members(path)
    batch_names = sorted((n for n in members if n.startswith("data_batch_")), key=lambda n: int(n.rsplit("_", 1)[1]))
    if not batch_names:
        raise UserError(f"--source {path}: no data_batch_* files found; expected the official CIFAR-10 python format")
    if "batches.meta" not in members:
        raise UserError(f"--source {path}: batches.meta (the class names) is missing")
    meta = unpickle_batch(members["batches.meta"], "batches.meta", path)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    if not class_names:
        raise UserError(f"--source {path}: batches.meta has no label_names")
    train = [decode_batch(unpickle_batch(members[n], n, path), n, path) for n in batch_names]
    test = None
    if "test_batch" in members:
        test_images, test_labels = decode_batch(unpickle_batch(members["test_batch"], "test_batch", path), "test_batch", path)
        test = Split(labels=test_labels, images=test_images)
    labels = np.concatenate([t[1] for t in train])
    # every batch's labels, the test batch's too: a bad test label would only surface after a whole training run
    for name, batch_labels in [*zip(batch_names, (t[1] for t in train)), *([("test_batch", test.labels)] if test else [])]:
        if len(batch_labels) and (batch_labels.min() < 0 or batch_labels.max() >= len(class_names)):
            bad = int(batch_labels.min() if batch_labels.min() < 0 else batch_labels.max())
            raise UserError(f"--source {path}: {name} has label {bad}, outside the {count(len(class_names), 'class')} of batches.meta")
    return Source(
        kind="cifar10-pickle",
        location=str(path.resolve()),
        class_names=class_names,
        image_shape=(32, 32, 3),
        train=Split(labels=labels, images=np.concatenate([t[0] for t in train])),
        test=test,
    )


# --- image folders -----------------------------------------------------------

def is_hidden(path: Path) -> bool:
    return path.name.startswith(".") or path.name in IGNORED_NAMES


def is_store(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in ZARR_MARKERS) or folder.joinpath(*UNFINISHED_BUILD_MARKER).is_file()


def not_scanned(folder: Path, excluded: dict[str, str]) -> str | None:
    """Why a folder below the source is not read for images, or None: the build's own store
    (--out inside --source) or any other zarr store must never become a class."""
    reason = excluded.get(os.path.realpath(folder))
    if reason is None and is_store(folder):
        reason = "a zarr store, not images"
    return reason


def list_class_folders(root: Path, ignored: list[str], excluded: dict[str, str]) -> dict[str, list[Path]]:
    """class name -> sorted image files (subfolders included), reporting all that is not used."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            ignored.append(f"{shown(entry)}: hidden")
        elif not entry.is_dir():
            ignored.append(f"{shown(entry)}: not in a class folder")
        elif reason := not_scanned(entry, excluded):
            ignored.append(f"{shown(entry)}: {reason}")
        else:
            files = list_images(entry, ignored, excluded)
            if files:
                classes[entry.name] = files
            else:
                ignored.append(f"{shown(entry)}: empty class folder, not used as a class")
    return classes


def walk_images(folder: Path, ignored: list[str], excluded: dict[str, str]):
    """Yield the image files below folder (as strings, in no set order), reporting what is not used."""
    # os.walk does not follow symbolic links to folders, so a link loop cannot trap it
    for parent, dirs, names in os.walk(folder):
        dirs.sort()  # the report's order does not depend on the file system's
        for name in list(dirs):
            path = os.path.join(parent, name)
            if name.startswith("."):
                reason = "hidden"
            elif os.path.islink(path):
                reason = "a symbolic link to a folder, not followed"
            else:
                reason = not_scanned(Path(path), excluded)
            if reason:
                ignored.append(f"{shown(path)}: {reason}")
                dirs.remove(name)
        for name in names:
            if name.startswith(".") or name in IGNORED_NAMES:
                ignored.append(f"{shown(Path(parent, name))}: hidden")
            elif os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                ignored.append(f"{shown(Path(parent, name))}: not an image file (.jpg .jpeg .png .bmp .webp)")
            else:
                yield os.path.join(parent, name)


def list_images(folder: Path, ignored: list[str], excluded: dict[str, str]) -> list[Path]:
    files = list(walk_images(folder, ignored, excluded))
    # strings, sorted by path components as Path objects sort, are ~10x cheaper than sorting Paths
    return [Path(file) for file in sorted(files, key=lambda file: file.split(os.sep))]


def has_images(folder: Path, excluded: dict[str, str]) -> bool:
    return next(walk_images(folder, [], excluded), None) is not None


def probe_size(path: Path) -> tuple[int, int]:
    """(height, width) as the decoder will return the image: EXIF orientations 5-8 (a phone's
    portrait photo stored landscape) swap them, as OpenCV and ImageOps.exif_transpose do.
    Reads the header and the EXIF block only, never the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            exif = Image.Exif()
            if image.info.get("exif"):  # JPEG, WebP and PNG put it here when they open, before any pixel
                exif.load(image.info["exif"])
            orientation = exif.get(EXIF_ORIENTATION)
    except Exception as exc:
        raise UserError(f"cannot read image {shown(path)}: {exc}") from exc
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def first_readable_size(files: list[Path]) -> tuple[int, int]:
    """The size of the first image that can be read: a bad first file is then named by the decoder,
    with the --skip-bad hint, and --skip-bad can leave it out."""
    errors = []
    for file in files:
        try:
            return probe_size(file)
        except UserError as exc:
            errors.append(exc)
    raise errors[0]


def scan_image_folder(root: Path, image_size: int | None, exclude: dict | None = None) -> Source:
    """An image folder in one of two layouts, decided from what is there, never guessed:
    flat   DIR/<class>/<image>
    split  DIR/train/<class>/<image>, optional DIR/test/<class>/... and DIR/val/ (or valid/) <class>/...
    Split-folder names beside other folders are ambiguous and refused."""
    if not root.is_dir():
        raise UserError(f"--source {root}: not a folder")
    root = root.absolute()  # every file below it, so the content hash can name them relative to it
    if is_store(root):
        raise UserError(f"--source {root} is a zarr store, not an image folder; pass the folder of images (or the CIFAR-10 archive) to build from")
    excluded = {os.path.realpath(path): reason for path, reason in (exclude or {}).items()}
    ignored: list[str] = []
    folders, empty, loose = [], [], []
    for entry in sorted(root.iterdir()):
        if is_hidden(entry):
            ignored.append(f"{shown(entry)}: hidden")
        elif not entry.is_dir():
            loose.append(entry)
        elif reason := not_scanned(entry, excluded):
            ignored.append(f"{shown(entry)}: {reason}")
        elif has_images(entry, excluded):
            folders.append(entry)
        else:
            empty.append(entry)
    splits = [f for f in folders if f.name.lower() in SPLIT_FOLDERS]
    if not splits:
        layout, chosen = "flat", {}
        ignored.extend(f"{shown(f)}: not in a class folder" for f in loose)
        ignored.extend(f"{shown(f)}: empty class folder, not used as a class" for f in empty)
        train_classes = {f.name: list_images(f, ignored, excluded) for f in folders}
    else:
        chosen = choose_split_folders(root, folders, splits)
        ignored.extend(f"{shown(f)}: not in a split folder" for f in loose)
        ignored.extend(f"{shown(f)}: empty folder, not used" for f in empty)
        layout = "split (" + ", ".join(chosen[name].name for name in ("train", "val", "test") if name in chosen) + ")"
        train_classes = list_class_folders(chosen["train"], ignored, excluded)
        if not train_classes:
            raise UserError(f"--source {root}: {chosen['train'].name}/ holds no class folders with images; expected "
                            f"{root}/{chosen['train'].name}/<class>/<image>")
    if not train_classes:
        raise UserError(f"--source {root}: no images found; expected {root}/<class>/<image> or {root}/train/<class>/<image>")
    class_names = sorted(train_classes)
    held = {}
    for name in ("test", "val"):
        if name in chosen:
            held[name] = held_out_split(root, chosen[name], chosen["train"], class_names, ignored, excluded)
    train_split = folder_split(train_classes, class_names)
    if image_size is not None:
        shape = (image_size, image_size, 3)
    else:
        shape = (*first_readable_size(train_split.files), 3)
    return Source(
        kind="image-folder",
        location=str(root),
        class_names=class_names,
        image_shape=shape,
        train=train_split,
        test=held.get("test"),
        ignored=ignored,
        val=held.get("val"),
        layout=layout,
    )


def choose_split_folders(root: Path, folders: list[Path], splits: list[Path]) -> dict[str, Path]:
    """The store's split -> its folder, for a source whose non-empty folders include split names;
    refuse every case that could be read two ways."""
    names = lambda paths: listed(f"{p.name}/" for p in paths)
    others = [f for f in folders if f not in splits]
    if others:
        raise UserError(
            f"--source {root}: cannot tell its layout: split folders ({names(splits)}) beside other folders "
            f"({names(others)}); for DIR/train/<class>/... move {names(others)} out of it, for DIR/<class>/... rename "
            f"{names(splits)}, or point --source at the folder that holds only class folders"
        )
    chosen: dict[str, Path] = {}
    for folder in splits:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in chosen:
            raise UserError(f"--source {root}: both {chosen[split].name}/ and {folder.name}/ hold {split} images; "
                            "keep one of them (merge or move the other out)")
        chosen[split] = folder
    if "train" not in chosen:
        raise UserError(f"--source {root}: {names(splits)} without train/: the split layout needs {root}/train/<class>/<image>; "
                        f"add train/, or point --source at {names(splits[:1])} itself to read it as DIR/<class>/<image>")
    return chosen


def held_out_split(root: Path, folder: Path, train: Path, class_names: list[str], ignored: list[str], excluded: dict[str, str]) -> Split:
    """A test/ or val/ folder's images: its classes must be train/'s."""
    classes = list_class_folders(folder, ignored, excluded)
    if not classes:
        raise UserError(f"--source {root}: {folder.name}/ holds no class folders with images; expected {root}/{folder.name}/<class>/<image>")
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise UserError(f"--source {root}: {folder.name}/ has classes that {train.name}/ lacks: {listed(unknown)}")
    return folder_split(classes, class_names)


def folder_split(classes: dict[str, list[Path]], class_names: list[str]) -> Split:
    """A folder's order takes the classes in turn (1st file of each class, then the 2nd, ...),
    so the first N images (--limit) sample every class, as CIFAR-10's own batches do."""
    entries = [
        (position, label, file)
        for label, name in enumerate(class_names)
        for position, file in enumerate(classes.get(name, []))
    ]
    entries.sort(key=lambda e: (e[0], e[1]))
    return Split(labels=np.array([e[1] for e in entries], dtype=np.int64), files=[e[2] for e in entries])


def hash_folder_files(source: Source) -> str:
    """The content hash computed from the files alone, without decoding them."""
    digests = {name: [file_digest(f) for f in split.files] for name, split in source_splits(source).items()}
    return folder_content_hash(source, digests)


def folder_content_hash(source: Source, digests: dict[str, list[str]]) -> str:
    """Hash of every used file's relative path, label and bytes, in source order."""
    digest = hashlib.sha256()
    skip = len(source.location) + 1  # files are listed below the location: their path relative to it, cheaply
    for split_name, split in source_splits(source).items():
        for file, label, file_hash in zip(split.files, split.labels, digests[split_name]):
            # file names as bytes: a name that is not UTF-8 must hash, not crash
            digest.update(os.fsencode(str(file)[skip:]) + f"\0{label}\0{file_hash}\n".encode())
    return "sha256:" + digest.hexdigest()
