"""train's options and their limits. Imports no Keras, so a bad option is refused at once."""

from __future__ import annotations

from dataclasses import dataclass

from augzarr.errors import OptionError

from .mixing import DEFAULT_ALPHA, MIXES
from .online import parse_online

MODELS = ("deep", "shallow")
KERAS_AUGMENTS = ("crop-flip", "randaugment")  # models.keras_augment_layers builds them
OPTIMIZER_NAMES = ("rmsprop", "adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_BUFFER_CHUNKS = 8
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536
MAX_LEARNING_RATE = 10.0
MAX_MIX_ALPHA = 100.0


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

    def validate(self) -> None:
        checks = [
            (1 <= self.epochs <= MAX_EPOCHS, f"--epochs must be in [1, {MAX_EPOCHS}]"),
            (1 <= self.batch_size <= MAX_BATCH, f"--batch-size must be in [1, {MAX_BATCH}]"),
            (self.model in MODELS, f"--model must be one of {', '.join(MODELS)}"),
            (self.optimizer in OPTIMIZER_NAMES, f"--optimizer must be one of {', '.join(OPTIMIZER_NAMES)}"),
            (self.learning_rate is None or 0 < self.learning_rate <= MAX_LEARNING_RATE, f"--learning-rate must be in (0, {MAX_LEARNING_RATE}]"),
            (self.lr_schedule in LR_SCHEDULES, f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}"),
            (0 <= self.seed < 2**32, "--seed must be in [0, 2**32)"),
            (self.buffer_chunks >= 1, "--buffer-chunks must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)
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

    @property
    def online_ops(self) -> tuple[str, ...]:
        return parse_online(self.online)

    @property
    def alpha(self) -> float | None:
        """The mix's alpha, its default when not given; None without --mix."""
        return (self.mix_alpha if self.mix_alpha is not None else DEFAULT_ALPHA[self.mix]) if self.mix else None
