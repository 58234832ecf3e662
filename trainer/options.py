"""train's options and their limits. Imports no Keras, so a bad option is refused at once."""

from __future__ import annotations

from dataclasses import dataclass

from augzarr.errors import OptionError

MODELS = ("deep", "shallow")  # built-in (models.py); besides them --model takes PATH.py:FUNCTION or PATH.keras (own_model.py)
KERAS_AUGMENTS = ("crop-flip", "randaugment")  # models.keras_augment_layers builds them
OPTIMIZER_NAMES = ("rmsprop", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_BUFFER_CHUNKS = 8
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LEARNING_RATE = 10.0
MAX_MIX_ALPHA = 100.0
ONLINE_OPS = ("flip", "shift", "erase")  # train --online (online.py); applied in this order, whatever order given
MIXES = ("mixup", "cutmix")  # train --mix (mixing.py)
DEFAULT_ALPHA = {"mixup": 0.2, "cutmix": 1.0}  # as Keras' MixUp and CutMix layers default


def parse_online(spec: str) -> tuple[str, ...]:
    """'flip,shift' -> ('flip', 'shift') in ONLINE_OPS order; '' or 'none' -> (). Raises ValueError naming an unknown op."""
    names = {name.strip() for name in spec.split(",") if name.strip() and name.strip() != "none"}
    unknown = sorted(names - set(ONLINE_OPS))
    if unknown:
        raise ValueError(f"unknown online operation {', '.join(unknown)}: choose from {', '.join(ONLINE_OPS)}")
    return tuple(op for op in ONLINE_OPS if op in names)


@dataclass
class TrainOptions:
    store: str = "data/aug.zarr"
    model: str = "deep"
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "rmsprop"
    learning_rate: float | None = None  # None: the optimizer's Keras default
    lr_schedule: str = "cosine"  # decay to 0 over the run's steps (BENCHMARKS.md: +5.7 points at the end); or "constant"
    seed: int = 0
    buffer_chunks: int = DEFAULT_BUFFER_CHUNKS
    online: str = ""  # train --online: comma-separated ops of online.ONLINE_OPS, "" for none
    mix: str = ""  # train --mix: one of mixing.MIXES, "" for none
    mix_alpha: float | None = None  # None: mixing.DEFAULT_ALPHA of the mix
    keras_augment: str = ""  # train --keras-augment: Keras preprocessing layers in the model, "" for none
    distribute: bool = False  # train --distribute: data-parallel over the local devices (distribute.py)
    devices: str = ""  # with --distribute: comma-separated device names, "" for every local accelerator
    tensorboard: bool = False  # train --tensorboard: TensorBoard logs in <run>/tensorboard (tensorboard_logs.py)

    def validate(self) -> None:
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, f"--epochs must be in [1, {MAX_EPOCHS}]"),
            (1 <= self.batch_size <= MAX_BATCH, f"--batch-size must be in [1, {MAX_BATCH}]"),
            (self.optimizer in OPTIMIZER_NAMES, f"--optimizer must be one of {', '.join(OPTIMIZER_NAMES)}"),
            (self.learning_rate is None or 0 < self.learning_rate <= MAX_LEARNING_RATE, f"--learning-rate must be in (0, {MAX_LEARNING_RATE}]"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (0 <= self.seed < 2**32, "--seed must be in [0, 2**32)"),
            (self.buffer_chunks >= 1, "--buffer-chunks must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
        self.validate_model()
        if self.devices and not self.distribute:
            raise OptionError("--devices needs --distribute")
        if self.keras_augment not in ("", *KERAS_AUGMENTS):
            raise OptionError(f"--keras-augment must be one of {', '.join(KERAS_AUGMENTS)}")
        if self.mix not in ("", *MIXES):
            raise OptionError(f"--mix must be one of {', '.join(MIXES)}")
        if self.mix_alpha is not None and not (0 < self.mix_alpha <= MAX_MIX_ALPHA):
            raise OptionError(f"--mix-alpha must be in (0, {MAX_MIX_ALPHA}]")
        if self.mix_alpha is not None and not self.mix:
            raise OptionError("--mix-alpha needs --mix mixup or --mix cutmix")
        try:
            parse_online(self.online)
        except ValueError as exc:
            raise OptionError(f"--online: {exc}") from None

    def validate_model(self) -> None:
        """A built-in name, or the syntax of PATH.py:FUNCTION or PATH.keras (the file itself is read when train builds the model)."""
        if self.model in MODELS:
            return
        from .own_model import parse_model_spec  # no Keras import

        try:
            spec = parse_model_spec(self.model)
        except ValueError as exc:
            raise OptionError(str(exc)) from None
        if spec is None:
            raise OptionError(f"--model must be one of {', '.join(MODELS)}, or your own as PATH.py:FUNCTION or PATH.keras")
        if self.keras_augment:
            raise OptionError("--keras-augment puts its layers into the built-in models only: put them into your own --model")

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
