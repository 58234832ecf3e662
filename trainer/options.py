"""train's and evaluate's options, each written once (augzarr/options.py says how): the commands, the Python
API (Store.stream) and the docs' reference come from here. Imports no Keras, so a bad option is refused at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from augzarr.errors import OptionError, UserError
from augzarr.options import DEFAULT_STORE, REQUIRED, check_fields, option
from augzarr.user_text import user_text

from .model_spec import parse_model_spec

# The names' one homes: each maps a name to what it is, for the help and the docs
MODELS = {
    "deep": "the notebook's second network",
    "shallow": "its first",
}  # models.py builds each by the function of its name
KERAS_AUGMENTS = {  # models.keras_augment_layers builds them
    "crop-flip": "RandomTranslation by up to 1/8 of the side and RandomFlip",
    "randaugment": "keras.layers.RandAugment, then those",
}
OPTIMIZER_NAMES = ("rmsprop", "adam", "sgd")
LR_SCHEDULES = {"constant": "the notebook's fixed rate", "cosine": "the rate decays to 0 over the run"}
ONLINE_OPS = {  # train --online (online.py); applied in this order, whatever order given
    "flip": "mirror half the images",
    "shift": "up to 1/8 of the side",
    "erase": "cutout of a quarter of the side",
}
DEFAULT_ALPHA = {
    "mixup": 0.2,
    "cutmix": 1.0,
}  # train --mix (mixing.py), each with its Beta(alpha, alpha) default as Keras' layers have
MIXES = tuple(DEFAULT_ALPHA)
DEFAULT_BUFFER_CHUNKS = 8
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LEARNING_RATE = 10.0
MAX_MIX_ALPHA = 100.0


def parse_online(spec: str) -> tuple[str, ...]:
    """'flip,shift' -> ('flip', 'shift') in ONLINE_OPS order; '' or 'none' -> (). Raises ValueError naming an unknown op."""
    names = {name.strip() for name in spec.split(",") if name.strip() and name.strip() != "none"}
    unknown = sorted(names - set(ONLINE_OPS))
    if unknown:
        raise ValueError(f"unknown online operation {', '.join(unknown)}: choose from {', '.join(ONLINE_OPS)}")
    return tuple(op for op in ONLINE_OPS if op in names)


def check_online(spec: str, label: str) -> None:
    try:
        parse_online(spec)
    except ValueError as exc:
        raise OptionError(f"{label}: {exc}") from None


def batch_size_option(default: int, help: str) -> int:
    return option(default, help, low=1, high=MAX_BATCH)


@dataclass
class TrainOptions:
    """What shapes a run: train's options, recorded in run.json (a resume may change --epochs only)."""

    store: str = option(DEFAULT_STORE, "The augzarr store to train from: a folder or an object-store URL (s3://...).")
    model: str = option(
        "deep",
        "A built-in network, {choices}; or your own: PATH.py:FUNCTION (FUNCTION(image_shape, n_classes) returns a Keras "
        "model) or PATH.keras (a saved model that fits the store).",
        choices=MODELS,
        strict=False,
    )  # validate_model checks it
    epochs: int = option(20, "Passes over the store's training rows.", low=1, high=MAX_EPOCHS)
    batch_size: int = batch_size_option(128, "Images per step.")
    optimizer: str = option("rmsprop", "One of {choices}.", choices=OPTIMIZER_NAMES)
    learning_rate: float | None = option(
        None,
        "The optimizer's learning rate (its start, under --lr-schedule cosine).",
        low=0,
        low_open=True,
        high=MAX_LEARNING_RATE,
        default_text="the optimizer's Keras default: 0.001 for rmsprop and adam, 0.01 for sgd",
    )
    lr_schedule: str = option(  # cosine: +5.7 points at the end (BENCHMARKS.md)
        "cosine", "One of {choices}.", choices=LR_SCHEDULES
    )
    seed: int = option(
        0, "Seeds weights, dropout and the stream's order.", low=0, high=2**32, high_open=True, high_text="2**32"
    )
    buffer_chunks: int = option(DEFAULT_BUFFER_CHUNKS, "Chunks shuffled together in the stream.", low=1)
    online: str = option(
        "",
        "Random operations on each training batch as it is streamed, comma-separated, of {choices}.",
        choices=ONLINE_OPS,
        strict=False,
        check=check_online,
    )
    mix: str = option(
        "", "Mix each training batch with a shuffled copy of itself, labels made soft: {choices}.", choices=MIXES
    )
    mix_alpha: float | None = option(
        None,
        "The mix's Beta(alpha, alpha) parameter.",
        low=0,
        low_open=True,
        high=MAX_MIX_ALPHA,
        default_text=", ".join(f"{alpha} for {mix}" for mix, alpha in DEFAULT_ALPHA.items()),
    )
    keras_augment: str = option(
        "",
        "Online augmentation by Keras preprocessing layers in the model (the usual alternative to stored copies): {choices}.",
        choices=KERAS_AUGMENTS,
    )
    distribute: bool = option(  # distribute.py
        False,
        "Train data-parallel over every local accelerator (MirroredStrategy on TensorFlow, DataParallel on JAX); "
        "--batch-size is then the global batch.",
        flags=("--distribute/--no-distribute",),
    )
    devices: str = option(
        "",
        "With --distribute: the devices to use, comma-separated (as TensorFlow or JAX names them).",
        default_text="every accelerator, else every CPU device",
    )
    tensorboard: bool = option(  # tensorboard_logs.py
        False,
        "Write TensorBoard logs into RUN/tensorboard: loss, accuracy and learning rate per epoch, and a few training "
        "images as streamed.",
        flags=("--tensorboard/--no-tensorboard",),
    )

    def validate(self) -> None:
        check_fields(self)
        self.validate_model()
        if self.devices and not self.distribute:
            raise OptionError("--devices needs --distribute")
        if self.mix_alpha is not None and not self.mix:
            raise OptionError("--mix-alpha needs --mix mixup or --mix cutmix")

    def validate_model(self) -> None:
        """A built-in name, or the syntax of PATH.py:FUNCTION or PATH.keras (the file itself is read when train builds the model)."""
        if self.model in MODELS:
            return
        try:
            spec = parse_model_spec(self.model)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        if spec is None:
            raise OptionError(
                f"--model must be one of {', '.join(MODELS)}, or your own as PATH.py:FUNCTION or PATH.keras"
            )
        if self.keras_augment:
            raise OptionError(
                "--keras-augment puts its layers into the built-in models only: put them into your own --model"
            )

    @property
    def device_list(self) -> list[str] | None:
        """--devices as names, without blanks or repeats (distribute.py matches them to this machine's devices)."""
        return list(dict.fromkeys(d.strip() for d in self.devices.split(",") if d.strip())) or None

    @property
    def online_ops(self) -> tuple[str, ...]:
        return parse_online(self.online)

    def normalised(self) -> TrainOptions:
        """The options as they run, for run.json and for comparing a resumed run's: --online as its operations in the
        order applied (' shift , flip,flip' and 'flip,shift,' -> 'flip,shift'; 'none' -> ''), --devices without blanks
        or repeats. Call after validate()."""
        from dataclasses import replace

        return replace(self, online=",".join(self.online_ops), devices=",".join(self.device_list or ()))

    @property
    def alpha(self) -> float | None:
        """The mix's alpha, its default when not given; None without --mix."""
        return (self.mix_alpha if self.mix_alpha is not None else DEFAULT_ALPHA[self.mix]) if self.mix else None


@dataclass
class TrainRunOptions:
    """What train does besides the run's settings: where the run goes, and what it says."""

    out: Path | None = option(
        None,
        "Run folder.",
        default_text="runs/<timestamp>; with --resume, the unfinished run active most recently that no live train is writing",
    )
    resume: bool = option(False, "Continue an interrupted run from its last finished epoch.")
    quiet: bool = option(False, "No per-epoch progress.")
    intended_use: str | None = option(
        None,
        "What the model is for and what it must not be used for, in your words: the model card's 'Intended use and "
        "out-of-scope uses' section.",
        check=user_text,
        default_text="a placeholder saying it was not given",
    )


@dataclass
class EvaluateOptions:
    """evaluate's options."""

    model: Path = option(REQUIRED, "A finished run folder (train --out).")
    store: str | None = option(
        None, "Evaluate on this store's test split (val when it has none): a folder or an object-store URL."
    )
    source: Path | None = option(
        None,
        "Or on a source's images: an image folder DIR/<class>/<image> with the model's classes, or any "
        "--source of build-aug (its test split, else val, else all of it).",
    )
    split: str | None = option(
        None, "With --store: one of {choices}.", choices=("test", "val"), default_text="test, else val"
    )
    batch_size: int = batch_size_option(256, "Images per prediction step.")
    json_out: Path | None = option(
        None,
        "Also write the results to this JSON file, with a reliability diagram and a grid of the most confident mistakes "
        "beside it (NAME-reliability.png, NAME-mistakes.png).",
        flags=("--json",),
    )

    def validate(self) -> None:
        check_fields(self)
        if (self.store is None) == (self.source is None):
            raise OptionError("give exactly one of --store PATH or --source DIR")
        if self.split is not None and self.source is not None:
            raise OptionError(
                "--split applies to --store only; an image folder is evaluated on its test/ part, else its val/ part, else all its images"
            )
        if self.json_out is not None and Path(self.json_out).is_dir():
            raise UserError(f"--json {self.json_out} is a folder; give a file name for the results")


# each command's options, in the order --help and the reference table show them
TRAIN = (TrainOptions, TrainRunOptions)
EVALUATE = (EvaluateOptions,)
