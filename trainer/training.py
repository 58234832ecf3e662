"""train's engine: the training run as a list of named phases, each a function below, in this order:

  chosen_options -> starting_point (a new run, or the unfinished run to continue and its last checkpoint)
  -> open_training_store -> plan_run_devices -> prepared_model -> run_folder (a new run claims its folder here)
  -> running_record -> fit -> evaluate_run -> write_outputs

Every phase that can refuse the run comes before run_folder: a refused run leaves no folder behind.
A run folder is in one of these states (records.py reads and writes its two records):
  running   -> run.json says "running"; state/ holds the last checkpoint (model and optimizer, after an
               epoch or, with --checkpoint-every, inside one), the stream's position and the random state
               there, and the history so far: --resume continues it with exactly the batches that follow
  complete  -> run.json says "complete"; every output below is written
A live train holds an exclusive lock on its run folder (runlock.py): one writer per run folder.
Final outputs, written before run.json turns complete: model.keras, model.json (the
architecture), model.weights.h5, history.csv, curves.png, metrics.json,
confusion.png, reliability.png, mistakes.png, model_card.md.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import keras
import numpy as np

from augzarr.errors import OptionError, UserError, one_line
from augzarr.storage.local import write_atomic
from augzarr.store_format import OpenStore, StoreAttrs, open_store, rows_per_chunk
from augzarr.user_text import user_text

from .applications import APPLICATIONS, FINE_TUNE_RATE_FACTOR, backbone_of, load_weights
from .distribute import PLAIN, Placement, activate, plan_devices
from .metrics import evaluate_stream, stored_images
from .mixing import BatchMix
from .models import build_model, check_notebook_model_fits
from .options import MODELS, NOTEBOOK_MODELS, OPTIMIZER_NAMES, RESUMABLE_CHANGES, TrainOptions
from .own_model import before_checkpoint_load, check_shapes, own_model
from .records import (
    BUILT_IN,
    COMPLETE,
    RUN_JSON,
    RUNNING,
    STATE_DIR,
    DevicesUsed,
    ModelInfo,
    Progress,
    RunRecord,
    StoreFingerprint,
    StoreSource,
    checkpoint_name,
    now_utc,
)
from .report import (
    MISTAKES_PNG,
    RELIABILITY_PNG,
    history_csv,
    model_card,
    plot_confusion,
    plot_curves,
    plot_mistakes,
    plot_reliability,
)
from .runlock import lock_run_dir, release, try_lock
from .stream import StoreStream
from .tensorboard_logs import check_available, tensorboard_callbacks

OPTIMIZERS = dict(zip(OPTIMIZER_NAMES, (keras.optimizers.RMSprop, keras.optimizers.Adam, keras.optimizers.SGD)))
RUNS_DIR = Path("runs")
MAX_BUFFER_BYTES = 2 << 30  # the stream holds about two windows of --buffer-chunks chunks
Say = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    evaluated_on: str
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0


def default_run_dir() -> Path:
    """runs/<timestamp>, with -2, -3, ... when runs start within the same second."""
    base = RUNS_DIR / time.strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def latest_unfinished_run(held: contextlib.ExitStack, runs_dir: Path = RUNS_DIR) -> Path:
    """The unfinished run under runs_dir that was active most recently (not the last by name)
    and that no live train is writing; locked for this process on return."""
    unfinished = [
        (record.last_activity(p.parent), p.parent)
        for p in runs_dir.glob(f"*/{RUN_JSON}")
        if (record := RunRecord.read(p.parent)) is not None and record.is_running
    ]
    if not unfinished:
        raise UserError(f"--resume: no unfinished run under {runs_dir}/; name one with --out RUN_DIR")
    for _, run_dir in sorted(unfinished, reverse=True):
        fd = try_lock(run_dir)
        if fd is not None:
            held.callback(release, fd)
            return run_dir
    live = ", ".join(str(d) for _, d in sorted(unfinished, reverse=True))
    raise UserError(
        f"--resume: every unfinished run under {runs_dir}/ is being written by a live train right now ({live}); "
        "wait for one to stop, or name one with --out RUN_DIR"
    )


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # same seed and store -> same run on this machine


def check_model_fits_store(model: keras.Model, attrs: StoreAttrs, where: str) -> None:
    """The model takes the store's images (a dimension left None takes any size) into its classes: own_model's rule."""
    check_shapes(
        where,
        model.input_shape,
        model.output_shape,
        tuple(attrs.image_shape),
        attrs.n_classes,
        "use a store built like the model's, or train a new model",
    )


class RunCheckpoints(keras.callbacks.Callback):
    """After every epoch, and with --checkpoint-every STEPS after every STEPS-th training step inside one: save model and
    optimizer, then the progress record naming it (with the position, the epoch's metrics so far and the random state),
    then drop older checkpoints. progress.json is replaced atomically, so a kill at any point leaves the last
    checkpoint loadable. A resumed run's random state is put back just before its first step, where the uninterrupted
    run took its next one: after the backend's loader of the training batches was made, which on torch draws a seed
    from torch's generator (the uninterrupted run made it once, before the checkpoint). So is a second fit's (the
    epochs after a resumed one) the state its first fit ended with."""

    def __init__(
        self,
        run_dir: Path,
        record: RunRecord,
        history: list[dict],
        stream: StoreStream,
        every: int = 0,
        resumed: Progress | None = None,
        images_per_epoch: int = 0,
    ):
        super().__init__()
        self.state_dir = run_dir / STATE_DIR
        self.run_dir = run_dir
        self.record = record
        self.history = history
        self.batches_per_epoch = stream.batches_per_epoch
        self.batch_size, self.epoch_rows = stream.batch_size, stream.served_rows
        self.every = every
        self.images_per_epoch = images_per_epoch  # every process's rows together: the rate is the run's
        self.interrupted = resumed if resumed is not None and resumed.inside_epoch else None
        self.random_state = resumed.random_state if resumed is not None else None  # put back before the first step
        self.last_random_state: dict | None = None  # as the last epoch ended

    def on_train_begin(self, logs=None):
        if self.random_state is None:
            self.random_state = self.last_random_state

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.started = self.trained = time.perf_counter()
        resumed = self.interrupted is not None and epoch == self.interrupted.epochs_done
        self.before = self.interrupted if resumed else None  # the epoch's batches trained before the resume
        self.offset = self.before.batches_done if resumed else 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.random_state is not None:
            restore_random_state(self.model, self.random_state)
            self.random_state = None

    def on_train_batch_end(self, batch, logs=None):
        self.trained = time.perf_counter()  # the rate counts training steps only, not validation
        done = self.offset + batch + 1
        step = self.epoch * self.batches_per_epoch + done
        if self.every and step % self.every == 0 and done < self.batches_per_epoch:  # an epoch's end: on_epoch_end
            sync_model_state(self.model)
            so_far = self.whole_epoch({k: float(v) for k, v in (logs or {}).items()}, done)
            self.save(self.epoch, done, so_far)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        # the images trained since the epoch began or the run resumed
        rows_here = self.images_per_epoch * (self.batches_per_epoch - self.offset) / self.batches_per_epoch
        if rows_here > 0 and self.trained > self.started:
            # into the logs, so Keras' epoch line shows it too (this callback runs before the progress bar)
            logs["images_per_second"] = round(rows_here / (self.trained - self.started), 1)
        whole = self.whole_epoch({k: float(v) for k, v in logs.items()}, self.batches_per_epoch)
        logs.update({k: v for k, v in whole.items() if k in logs})  # a resumed epoch's line shows the whole epoch's
        row = {"epoch": epoch + 1, **whole}
        # the rate as the schedule left it at the epoch's end (as TensorBoard's callback logs it): shows --freeze-epochs' switch
        row.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self.history.append(row)
        self.save(epoch + 1, 0, None)
        write_atomic(self.run_dir / "history.csv", history_csv(self.history))

    def whole_epoch(self, logs: dict, done: int) -> dict:
        """The epoch's metrics over its first `done` batches, and its seconds: Keras' running means cover only the
        batches since a resume, so those of the batches before it are weighed in, by rows (as Keras weighs them)."""
        seconds = round(time.perf_counter() - self.started, 2)
        if self.before is None or not self.before.epoch_so_far:
            return {**logs, "seconds": seconds}
        earlier, rows_before = self.before.epoch_so_far, self.offset * self.batch_size
        rows_after = min(done * self.batch_size, self.epoch_rows) - rows_before
        merged = {
            k: (earlier[k] * rows_before + v * rows_after) / (rows_before + rows_after) if k in earlier else v
            for k, v in logs.items()
            if k != "seconds"
        }
        return {**merged, "seconds": round(earlier.get("seconds", 0) + seconds, 2)}

    def save(self, epochs_done: int, batches_done: int, epoch_so_far: dict | None) -> None:
        name = checkpoint_name(epochs_done, batches_done)
        self.model.save(self.state_dir / name)
        state = random_state(self.model)
        if not batches_done:
            self.last_random_state = state
        Progress(epochs_done, name, self.history, batches_done, epoch_so_far, state).write(self.run_dir)
        for old in self.state_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        self.record = self.record.touched()  # alive now: train --resume picks the latest such run
        self.record.write(self.run_dir)


SEED_STATE = "seed_generator_state"  # the variable of each keras.random.SeedGenerator (Dropout's, random layers')


def seed_generator_states(model: keras.Model) -> list:
    return [v for v in model.variables if v.path.split("/")[-1] == SEED_STATE]


def sync_model_state(model: keras.Model) -> None:
    """JAX keeps the training state outside the model's variables between epochs: put it back into them."""
    if hasattr(model, "jax_state_sync"):
        model.jax_state_sync()


def random_state(model: keras.Model) -> dict:
    """What the next training steps draw from: the model's seed generators (dropout on TensorFlow and JAX, random
    layers) and, on the torch backend, torch's generators (its unseeded dropout draws from them)."""
    state = {"seed_generators": [np.asarray(v.numpy()).tolist() for v in seed_generator_states(model)]}
    if keras.backend.backend() == "torch":
        import torch

        state["torch"] = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
        if torch.cuda.is_available():
            state["torch_cuda"] = [
                base64.b64encode(g.numpy().tobytes()).decode() for g in torch.cuda.get_rng_state_all()
            ]
    return state


def restore_random_state(model: keras.Model, state: dict) -> None:
    """random_state() put back: a loaded model's seed generators start from new seeds otherwise."""
    saved = state.get("seed_generators") or []
    variables = seed_generator_states(model)
    if len(saved) == len(variables):
        for variable, value in zip(variables, saved):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    if keras.backend.backend() == "torch" and state.get("torch"):
        import torch

        def tensor(text: str) -> torch.Tensor:
            return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

        torch.set_rng_state(tensor(state["torch"]))
        if state.get("torch_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensor(text) for text in state["torch_cuda"]])


def initial_learning_rate(options: TrainOptions) -> float:
    return options.learning_rate or float(OPTIMIZERS[options.optimizer]().get_config()["learning_rate"])


def make_optimizer(options: TrainOptions, steps: int, rate: float | None = None) -> keras.optimizers.Optimizer:
    """The optimizer at `rate` (default --learning-rate, or its Keras default), cosine-decayed to 0 over `steps`
    (the default) or constant: a constant RMSprop rate of 1e-3 leaves the validation accuracy
    swinging by +-2 points between late epochs (BENCHMARKS.md); decaying it settles training."""
    rate = initial_learning_rate(options) if rate is None else rate
    if options.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(initial_learning_rate=rate, decay_steps=steps)
    return OPTIMIZERS[options.optimizer](learning_rate=rate)


@dataclass(frozen=True)
class Phase:
    """Epochs [first, end) of a run trained alike: with --freeze-epochs, the backbone frozen at the run's rate, then
    the whole model fine-tuned at FINE_TUNE_RATE_FACTOR of it; otherwise one phase, the whole run."""

    first: int
    end: int
    frozen: bool = False
    fine_tuning: bool = False

    def rate(self, options: TrainOptions) -> float:
        return initial_learning_rate(options) * (FINE_TUNE_RATE_FACTOR if self.fine_tuning else 1)


def phase_of(options: TrainOptions, epoch: int) -> Phase:
    """The phase epoch `epoch` (counted from 0) trains in."""
    return next(phase for phase in training_phases(options) if phase.first <= epoch < phase.end)


def at_phase_switch(part: tuple, options: TrainOptions, streams) -> list[tuple]:
    """A part of fit's (stream, first epoch, end epoch, steps per epoch) cut where --freeze-epochs' fine-tuning starts:
    Keras fits one phase at a time, the second from a training stream that starts at the switch."""
    stream, first, end, steps = part
    switch = options.freeze_epochs
    if not first < switch < end:
        return [part]
    tuning = streams.training(switch, 0)
    return [(stream, first, switch, steps), (tuning, switch, end, tuning.batches_per_epoch)]


def training_phases(options: TrainOptions) -> list[Phase]:
    if not options.freeze_epochs:
        return [Phase(0, options.epochs)]
    phases = [
        Phase(0, options.freeze_epochs, frozen=True),
        Phase(options.freeze_epochs, options.epochs, fine_tuning=True),
    ]
    return [phase for phase in phases if phase.end > phase.first]


def compile_for(model: keras.Model, options: TrainOptions, phase: Phase, steps_per_epoch: int) -> None:
    """Compile with --optimizer at the phase's rate, its schedule over the phase's steps, and train's loss."""
    optimizer = make_optimizer(options, steps=(phase.end - phase.first) * steps_per_epoch, rate=phase.rate(options))
    # mixed batches carry soft labels: one-hot rows for every stream, and the loss for them
    loss = "categorical_crossentropy" if options.mix else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def enter_phase(model: keras.Model, options: TrainOptions, phase: Phase, steps_per_epoch: int, scope, say: Say) -> None:
    """Before a phase's first epoch: fine-tuning unfreezes the backbone and compiles again at its rate (a fresh
    optimizer, as Keras' transfer-learning guide does). A resumed model already unfrozen (its checkpoint came after
    the switch) keeps its optimizer and schedule as saved."""
    backbone = backbone_of(model)
    if not phase.fine_tuning or backbone is None or backbone.trainable:
        return
    with scope:
        backbone.trainable = True
        compile_for(model, options, phase, steps_per_epoch)
    say(
        f"epoch {phase.first + 1}: the backbone unfrozen, fine-tuning the whole model at learning rate "
        f"{phase.rate(options):g}"
    )


def compiled_model(
    options: TrainOptions, attrs: StoreAttrs, scope, steps_per_epoch: int, say: Say
) -> tuple[keras.Model, ModelInfo]:
    """The model --model names (built in, or the user's own: own_model.py), with any pretrained --weights loaded and
    its backbone frozen for --freeze-epochs, compiled by train with its optimizer, learning-rate schedule and loss,
    and what run.json records of it. A user's model that came compiled is compiled again, so that --optimizer,
    --learning-rate, --lr-schedule and --mix act on it too."""
    if options.model in NOTEBOOK_MODELS:
        check_notebook_model_fits(options.model, tuple(attrs.image_shape))
    first = training_phases(options)[0]
    with scope:
        if options.model in MODELS:
            pretrained = options.weights != "none"
            model = build_model(
                options.model,
                tuple(attrs.image_shape),
                attrs.n_classes,
                options.keras_augment,
                options.seed,
                pretrained=pretrained,
            )
            info = ModelInfo(options.model, BUILT_IN)
            if pretrained:
                loaded = load_weights(model, options.model, options.weights)
                info = replace(
                    info,
                    weights_file=str(loaded.path),
                    weights_sha256=loaded.sha256,
                    weights_url=loaded.url,
                    weights_downloaded=loaded.downloaded if loaded.url else None,
                    weights_published=loaded.published,
                )
                if not loaded.published:
                    say(
                        f"--weights {options.weights}: {loaded.path} is not the file Keras publishes for "
                        f"{APPLICATIONS[options.model].keras_name} (its md5 differs); training from it as given"
                    )
            if first.frozen:
                backbone_of(model).trainable = False
        else:
            model, info = own_model(options.model, tuple(attrs.image_shape), attrs.n_classes)
            if info.came_compiled:
                say(
                    f"--model {options.model}: the model came compiled; train compiles it again with --optimizer "
                    f"{options.optimizer} ({options.lr_schedule} rate) and its own loss and accuracy metric"
                )
        compile_for(model, options, first, steps_per_epoch)
    return model, replace(info, name=model.name)


def warn_on_stderr(text: str) -> None:
    print(f"warning: {one_line(text)}", file=sys.stderr)  # under --quiet too


# -- the phases of a run, in order --------------------------------------------------------------------


def chosen_options(given: dict) -> TrainOptions:
    """The options given, the rest at their defaults: checked before any folder is touched, and normalised (what runs is
    what run.json records, and what a resume compares)."""
    unknown = set(given) - {f.name for f in fields(TrainOptions)}
    if unknown:
        raise ValueError(f"unknown train options {sorted(unknown)}")
    options = TrainOptions(**given)
    options.validate()
    return options.normalised()


@dataclass
class Start:
    """What a run starts from: a new run (no record; its folder is claimed once every check has passed), or an
    unfinished run (its folder, locked, its record and its progress: its last checkpoint)."""

    options: TrainOptions  # what this run trains with: a resumed run's own, with --epochs as given
    intended_use: str | None
    run_dir: Path | None = None
    record: RunRecord | None = None
    progress: Progress = field(default_factory=Progress)

    @property
    def resuming(self) -> bool:
        return self.record is not None

    @property
    def done(self) -> int:
        return self.progress.epochs_done

    @property
    def from_checkpoint(self) -> bool:
        """A checkpoint to continue from (after an epoch, or inside one); else the run starts from scratch."""
        return self.progress.checkpoint is not None and (self.done > 0 or self.progress.inside_epoch)


def starting_point(
    given: dict,
    options: TrainOptions,
    intended_use: str | None,
    out: Path | None,
    resume: bool,
    held: contextlib.ExitStack,
) -> Start:
    """The one place that decides what the run continues from: --resume, or the very command that was interrupted
    run again (same options, same --out: it continues, as build-aug's does), continues an unfinished run; anything
    else starts a new one. A resume may change --epochs (not below the epochs done) and --intended-use only."""
    if not resume and out is not None:
        interrupted = RunRecord.read(out)
        resume = (
            interrupted is not None
            and interrupted.is_running
            and interrupted.options is not None
            and replace(interrupted.options, decode_threads=None) == replace(options, decode_threads=None)
        )  # how many threads decode changes no batch
    if not resume:
        return Start(options, intended_use)
    run_dir, record = find_run_to_resume(out, held)
    options = resumed_options(run_dir, record, given)
    progress = Progress.read(run_dir)
    if options.epochs < progress.epochs_done:
        raise UserError(
            f"--epochs {options.epochs} is fewer than the {progress.epochs_done} epochs {run_dir} has already finished"
        )
    if progress.inside_epoch and options.epochs == progress.epochs_done:
        raise UserError(
            f"--epochs {options.epochs}: {run_dir} has already trained part of epoch {progress.epochs_done + 1} "
            f"(its last checkpoint is inside it); give --epochs {progress.epochs_done + 1} or more"
        )
    # the recorded --intended-use unless given: it changes no weight
    return Start(options, intended_use or record.intended_use, run_dir, record, progress)


def find_run_to_resume(out: Path | None, held: contextlib.ExitStack) -> tuple[Path, RunRecord]:
    """The run to continue, locked for this process first (a live run is refused), then read."""
    run_dir = out or latest_unfinished_run(held)
    if out is not None and out.is_dir():
        held.callback(release, lock_run_dir(out))
    record = RunRecord.read(run_dir)
    if record is None:
        raise UserError(f"--resume: {run_dir} is not a train run folder (no readable run.json)")
    if record.is_complete:
        raise UserError(f"--resume: {run_dir} is already complete; start a new run with another --out")
    return run_dir, record


def resumed_options(run_dir: Path, record: RunRecord, given: dict) -> TrainOptions:
    """The run's recorded options with those given over them; refused when one given differs, except those a resume
    may change (RESUMABLE_CHANGES)."""
    if record.options is None:
        raise UserError(
            f"--resume: {run_dir}/{RUN_JSON} records no options train can read; start a new run with another --out"
        )
    wanted = TrainOptions(**{**asdict(record.options), **given})
    wanted.validate()
    wanted = wanted.normalised()
    conflicts = [
        f"--{k.replace('_', '-')} {getattr(record.options, k)} -> {getattr(wanted, k)}"
        for k in given
        if k not in RESUMABLE_CHANGES and getattr(record.options, k) != getattr(wanted, k)
    ]
    if conflicts:
        raise UserError(
            f"--resume: {run_dir} was started with other options ({'; '.join(conflicts)}); resume it with its own; only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_CHANGES)} may change"
        )
    return wanted


@dataclass
class TrainingData:
    """The store a run trains from, checked, and its rows per split."""

    store: OpenStore
    train_rows: int
    val_rows: int
    test_rows: int

    @property
    def attrs(self) -> StoreAttrs:
        return self.store.attrs


def open_training_store(start: Start) -> TrainingData:
    """The store --store names, refused when it cannot train or judge a model, when --buffer-chunks would hold too much of
    it, or, for a resumed run, when it is not the store the run started with."""
    options = start.options
    store = open_store(options.store)
    data = TrainingData(store, *(store.rows(split) for split in ("train", "val", "test")))
    if data.train_rows == 0:
        raise UserError(f"store {options.store} has no training rows: rebuild it with build-aug")
    if data.val_rows == 0 and data.test_rows == 0:
        raise UserError(
            f"store {options.store} has neither validation nor test rows to judge the model: rebuild it with --val-fraction above 0"
        )
    images = store.images("train")
    chunk_bytes = rows_per_chunk(images) * int(np.prod(images.shape[1:]))  # decoded, as the window holds them
    if options.buffer_chunks * chunk_bytes > MAX_BUFFER_BYTES:
        raise OptionError(
            f"--buffer-chunks {options.buffer_chunks} would hold {options.buffer_chunks * chunk_bytes / 2**30:,.1f} GiB "
            f"per window of this store; use at most {MAX_BUFFER_BYTES // chunk_bytes}"
        )
    if start.resuming and start.record.store_fingerprint != StoreFingerprint.of(data.attrs):
        raise UserError(
            f"--resume: the store {options.store} is not the one {start.run_dir} started with; resume with that store or start a new run"
        )
    return data


@dataclass
class DevicePlan:
    """Where the run trains (--distribute): the devices, the strategy's scope the model is built in, the stream's shard."""

    placement: Placement
    scope: contextlib.AbstractContextManager
    shard: tuple[int, int]  # this process's (index, count) share of the training stream

    @property
    def batch_multiple(self) -> int:
        return self.placement.batch_multiple


def plan_run_devices(options: TrainOptions, warn: Say) -> DevicePlan:
    """The devices settled (and refused) first, and --tensorboard checked, then the strategy set up."""
    placement = plan_devices(options.device_list, warn) if options.distribute else PLAIN
    split_by = placement.batch_multiple
    if options.batch_size % split_by:
        raise OptionError(
            f"--batch-size {options.batch_size} does not split evenly over the {split_by} devices: use a multiple of {split_by}"
        )
    if options.tensorboard:
        check_available()
    return DevicePlan(placement, *activate(placement))


def prepared_model(start: Start, data: TrainingData, devices: DevicePlan, say: Say) -> tuple[keras.Model, ModelInfo]:
    """The model, built and compiled in the devices' scope, or a resumed run's checkpoint; checked against the store.
    For a new run this comes before its folder is claimed: a --model that cannot be used leaves no folder behind."""
    options = start.options
    if start.from_checkpoint:
        model, info = checkpoint_model(start, data, devices)
    else:
        seed_everything(options.seed)
        model, info = compiled_model(options, data.attrs, devices.scope, steps_per_epoch(options, data), say)
        check_model_fits_store(model, data.attrs, f"--model {options.model}")
        if start.resuming:
            recorded = start.record.model
            if recorded is not None and recorded.sha256 not in (None, info.sha256):
                raise UserError(
                    f"--resume: {recorded.file} has changed since {start.run_dir} started (its sha256 differs); "
                    "put the original back, or start a new run"
                )
            if recorded is not None and recorded.weights_sha256 not in (None, info.weights_sha256):
                raise UserError(
                    f"--resume: the weights {recorded.weights_file} have changed since {start.run_dir} started (their "
                    "sha256 differs); put the original back, or start a new run"
                )
    if start.from_checkpoint:
        # the checkpoint's random state is put back before the first step (RunCheckpoints); a run recorded before
        # it was saved draws seeded dropout masks, though not the uninterrupted run's
        seed_everything(options.seed + start.done)
    return model, replace(info, parameters=model.count_params())


def steps_per_epoch(options: TrainOptions, data: TrainingData) -> int:
    """The steps a learning-rate schedule counts per epoch."""
    return -(-data.train_rows // options.batch_size)


def checkpoint_model(start: Start, data: TrainingData, devices: DevicePlan) -> tuple[keras.Model, ModelInfo]:
    """A resumed run's last checkpoint: model and optimizer, as it saved them."""
    before_checkpoint_load(start.record.model)  # an own model's custom layers, registered by its file
    with devices.scope:
        model = keras.models.load_model(start.run_dir / STATE_DIR / start.progress.checkpoint)
    check_model_fits_store(model, data.attrs, f"the checkpoint of {start.run_dir}")
    return model, start.record.model or ModelInfo(start.options.model, BUILT_IN)


def run_folder(start: Start, out: Path | None, data: TrainingData, held: contextlib.ExitStack) -> Path:
    """A resumed run's folder, or a new one claimed now, its run.json saying "running" written at once: a run
    killed from then on can be resumed (from scratch if no epoch finished)."""
    if start.resuming:
        run_dir = start.run_dir
    else:
        run_dir = claim_run_dir(out, held)
        RunRecord(
            RUNNING,
            str(run_dir),
            start.options,
            StoreFingerprint.of(data.attrs),
            StoreSource.of(data.attrs),
            updated_utc=now_utc(),
        ).write(run_dir)
    (run_dir / STATE_DIR).mkdir(exist_ok=True)
    return run_dir


def claim_run_dir(out: Path | None, held: contextlib.ExitStack) -> Path:
    """A new, empty run folder (never one that holds anything), locked for this process. A run that fails with an
    error before its first epoch finished gives the folder back as it found it (given_back_on_failure)."""
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the run")
    found = set(out.iterdir()) if out is not None and out.is_dir() else None  # None: made here
    run_dir = out
    while run_dir is None:  # runs/<timestamp>: made here, so two trains started together get two folders
        candidate = default_run_dir()
        with contextlib.suppress(FileExistsError):
            candidate.mkdir(parents=True)
            run_dir = candidate
    run_dir.mkdir(parents=True, exist_ok=True)
    held.callback(release, lock_run_dir(run_dir))  # before looking inside: a live run is refused as such
    if run_dir.is_dir() and any(
        not entry.name.endswith(".tmp") for entry in run_dir.iterdir()
    ):  # a .tmp: cut short before it counted
        record = RunRecord.read(run_dir)
        status = record.status if record is not None else None
        hint = "continue it with --resume" if status == RUNNING else "choose another --out"
        raise UserError(f"--out {run_dir} already holds {'a run' if status else 'files'}: {hint}")
    run_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(given_back_on_failure(run_dir, found))
    return run_dir


@contextlib.contextmanager
def given_back_on_failure(run_dir: Path, found: set[Path] | None):
    """A new run that fails with an error before its first epoch's checkpoint holds nothing to resume: undo its claim
    (remove the folder it made, or what it wrote into the folder it found), so that the corrected command may use the
    same --out and the same command does not "resume" the failure. Ctrl-C, kill and an OSError (a full disk: its
    message says to free space and run again or --resume) leave the claim: run again, it resumes."""
    try:
        yield
    except OSError:
        raise
    except Exception:
        if not Progress.exists(run_dir):
            for entry in [run_dir] if found is None else [e for e in run_dir.iterdir() if e not in found]:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


def running_record(
    start: Start, run_dir: Path, data: TrainingData, devices: DevicePlan, model_info: ModelInfo
) -> RunRecord:
    """Everything run.json records of a run while it trains."""
    options, attrs = start.options, data.attrs
    return RunRecord(
        status=RUNNING,
        run_dir=str(run_dir),
        options=options,
        store_fingerprint=StoreFingerprint.of(attrs),
        store_source=StoreSource.of(attrs),
        updated_utc=now_utc(),
        backend=keras.backend.backend(),
        versions={"keras": keras.__version__, "numpy": np.__version__},
        model=model_info,  # which model: the spec, and for a file its sha256
        learning_rate=initial_learning_rate(options),
        fine_tune_learning_rate=next((p.rate(options) for p in training_phases(options) if p.fine_tuning), None),
        mix_alpha=options.alpha,
        devices=DevicesUsed(tuple(devices.placement.devices), devices.placement.distributed),
        train_rows=data.train_rows,
        class_names=attrs.class_names,
        image_shape=attrs.image_shape,
        intended_use=start.intended_use,
    )


@dataclass
class RunStreams:
    """The streams a run fits from: training (training() makes them), a second one of the same batches for
    --tensorboard's images (tensorboard_logs.StreamedImages), and validation when the store has validation rows."""

    training: Callable[[int, int], StoreStream]  # (start_epoch, start_batch) -> a training stream from there
    images: StoreStream | None
    val: StoreStream | None


@contextlib.contextmanager
def run_streams(
    options: TrainOptions, data: TrainingData, devices: DevicePlan, start_epoch: int, say: Say
) -> Iterator[RunStreams]:
    """The run's streams, each closed on the way out however it ends."""
    with contextlib.ExitStack() as opened:

        def training_stream(first_epoch: int, first_batch: int = 0) -> StoreStream:
            mix = BatchMix(options.mix, options.alpha, data.attrs.n_classes, options.seed) if options.mix else None
            stream = StoreStream(
                data.store,
                "train",
                options.batch_size,
                shuffle=True,
                seed=options.seed,
                start_epoch=first_epoch,
                start_batch=first_batch,
                buffer_chunks=options.buffer_chunks,
                decode_threads=options.decode_threads,
                online=options.online_ops,
                mix=mix,
                shard=devices.shard,
                batch_multiple=devices.batch_multiple,
            )
            opened.callback(stream.close)
            return stream

        images = training_stream(start_epoch) if options.tensorboard else None
        val = None
        if data.val_rows:
            val = StoreStream(
                data.store,
                "val",
                options.batch_size,
                shuffle=False,
                soft_labels=bool(options.mix),
                batch_multiple=devices.batch_multiple,
                decode_threads=options.decode_threads,
            )
            opened.callback(val.close)
        else:
            say("the store has no validation rows: no validation during training")
        yield RunStreams(training_stream, images, val)


def fit(
    model: keras.Model,
    start: Start,
    record: RunRecord,
    data: TrainingData,
    devices: DevicePlan,
    run_dir: Path,
    verbose: int | str,
    say: Say,
) -> list[dict]:
    """The epochs from the last checkpoint to --epochs, checkpointed after each (and every --checkpoint-every
    steps); the whole history. From a checkpoint inside an epoch, the rest of that epoch is fitted first (Keras
    fits whole epochs of steps_per_epoch steps), then the epochs after it."""
    options, progress, history = start.options, start.progress, list(start.progress.history)
    with run_streams(options, data, devices, start.done, say) as streams:
        train = streams.training(start.done, progress.batches_done)
        per_epoch = train.batches_per_epoch
        if start.resuming:
            say(f"resuming {start.run_dir} {resume_point(start, per_epoch)}")
        checkpoints = RunCheckpoints(
            run_dir,
            record,
            history,
            train,
            options.checkpoint_every,
            progress if start.from_checkpoint else None,
            images_per_epoch=data.train_rows,
        )
        # TensorBoard's callbacks before the checkpoint: killed between the two, an epoch is logged twice, never lost
        callbacks = [
            *(tensorboard_callbacks(run_dir, streams.images, start.done) if streams.images is not None else []),
            checkpoints,
        ]
        for stream, first_epoch, end_epoch, steps in fit_parts(start, train, streams):
            if first_epoch >= end_epoch:
                continue
            enter_phase(
                model, options, phase_of(options, first_epoch), steps_per_epoch(options, data), devices.scope, say
            )
            with stream_errors(stream, streams.val):
                model.fit(
                    stream.fit_input(),  # on TensorFlow, the same batches fed a window at a time (stream.py)
                    steps_per_epoch=steps,
                    epochs=end_epoch,
                    initial_epoch=first_epoch,
                    validation_data=streams.val,
                    shuffle=False,  # the stream shuffles; Keras would reorder batch indices
                    callbacks=callbacks,
                    verbose=verbose,
                )
    return history


def resume_point(start: Start, per_epoch: int) -> str:
    """Where a resumed run continues, in words."""
    options, progress = start.options, start.progress
    if progress.inside_epoch:
        return f"in epoch {start.done + 1} of {options.epochs}, after batch {progress.batches_done} of its {per_epoch}"
    return f"after epoch {start.done} of {options.epochs}"


def fit_parts(start: Start, train, streams) -> list[tuple]:
    """The calls of model.fit the run still needs, as (stream, first epoch, end epoch, steps per epoch): the rest of an
    interrupted epoch first, then whole epochs, cut where --freeze-epochs switches to fine-tuning."""
    options, progress, per_epoch = start.options, start.progress, train.batches_per_epoch
    parts = [(train, start.done, options.epochs, per_epoch)]
    if progress.inside_epoch:
        parts = [(train, start.done, start.done + 1, per_epoch - progress.batches_done)]
        if start.done + 1 < options.epochs:
            parts.append((streams.training(start.done + 1, 0), start.done + 1, options.epochs, per_epoch))
    return [piece for part in parts for piece in at_phase_switch(part, options, streams)]


@dataclass
class Evaluation:
    split: str  # "test", or "val" for a store without a test split
    metrics: dict
    mistake_images: np.ndarray  # the images of metrics["confidently_wrong"], in its order


def evaluate_run(
    model: keras.Model, options: TrainOptions, data: TrainingData, devices: DevicePlan, say: Say
) -> Evaluation:
    """The trained model on the store's test split, else its validation split."""
    split = "test" if data.test_rows else "val"
    if not data.test_rows:
        say("the store has no test split: evaluating on the validation split instead")
    stream = StoreStream(
        data.store,
        split,
        options.batch_size,
        shuffle=False,
        batch_multiple=devices.batch_multiple,
        decode_threads=options.decode_threads,
    )
    try:
        with stream_errors(stream):
            metrics = evaluate_stream(model, stream, data.attrs.class_names)
    finally:
        stream.close()
    return Evaluation(
        split, metrics, stored_images(data.store, split, [m["row"] for m in metrics["confidently_wrong"]])
    )


def train_run(
    given: dict,
    out: Path | None = None,
    resume: bool = False,
    verbose: int | str = "auto",
    say: Say = print,
    intended_use: str | None = None,
    warn: Say = warn_on_stderr,
) -> TrainResult:
    """Train (or resume) a run; returns its folder and metrics.

    given: the TrainOptions fields the user set (the rest take defaults, or on --resume the
    run's recorded values; a resume may change --epochs only). say() gets the human-readable lines,
    warn() the warnings (printed on stderr by default, whatever say does).
    intended_use: train --intended-use, the model card's statement of what the model is for
    (recorded in run.json; a resume keeps the recorded one unless given, as it changes no weight).
    The run folder is locked from when it is chosen to the end: one writer per run folder.
    """
    with contextlib.ExitStack() as held:
        return train_locked(given, out, resume, verbose, say, held, intended_use, warn)


def train_locked(
    given: dict,
    out: Path | None,
    resume: bool,
    verbose: int | str,
    say: Say,
    held: contextlib.ExitStack,
    intended_use: str | None = None,
    warn: Say = warn_on_stderr,
) -> TrainResult:
    """The run's phases, in order; every check that can refuse the run comes before run_folder claims one."""
    options = chosen_options(given)
    start = starting_point(given, options, user_text(intended_use, "--intended-use"), out, resume, held)
    data = open_training_store(start)
    devices = plan_run_devices(start.options, warn)
    model, model_info = prepared_model(start, data, devices, say)
    run_dir = run_folder(start, out, data, held)
    record = running_record(start, run_dir, data, devices, model_info)
    record.write(run_dir)
    history = fit(model, start, record, data, devices, run_dir, verbose, say)
    evaluation = evaluate_run(model, start.options, data, devices, say)
    write_outputs(run_dir, model, record, data.attrs, evaluation, history)
    return TrainResult(
        run_dir=run_dir,
        metrics=evaluation.metrics,
        evaluated_on=evaluation.split,
        history=history,
        resumed_from=start.done,
    )


@contextlib.contextmanager
def stream_errors(*streams):
    """A store damaged while training reaches the user as the stream's one line, not as the backend's
    wrapped error (TensorFlow turns an exception in its input pipeline into an UnknownError traceback)."""
    try:
        yield
    except Exception:
        failure = next((s.failure for s in streams if s is not None and s.failure is not None), None)
        if failure is not None:
            raise failure from None
        raise


def write_outputs(
    run_dir: Path, model: keras.Model, record: RunRecord, attrs: StoreAttrs, evaluation: Evaluation, history: list[dict]
) -> None:
    """Every final output, then run.json marked complete: a run folder never claims more than it holds."""
    record = replace(record, evaluated_on=evaluation.split)
    metrics, title = evaluation.metrics, f"{record.options.model} on {evaluation.split}"
    model.save(run_dir / "model.keras")
    (run_dir / "model.json").write_text(model.to_json(indent=2))
    model.save_weights(run_dir / "model.weights.h5")
    write_atomic(run_dir / "history.csv", history_csv(history))
    if history:
        plot_curves(history, run_dir / "curves.png")
    (run_dir / "metrics.json").write_text(json.dumps({"evaluated_on": evaluation.split, **metrics}, indent=2))
    plot_confusion(metrics, run_dir / "confusion.png", f"{title}: accuracy {metrics['accuracy']:.3f}")
    plot_reliability(metrics["calibration"], run_dir / RELIABILITY_PNG, title)
    plot_mistakes(
        evaluation.mistake_images,
        metrics["confidently_wrong"],
        run_dir / MISTAKES_PNG,
        f"{title}: the most confident mistakes",
    )
    (run_dir / "model_card.md").write_text(model_card(record, attrs, metrics, history))
    replace(
        record, status=COMPLETE, updated_utc=now_utc(), finished_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ).write(run_dir)
