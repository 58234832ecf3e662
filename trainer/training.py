"""train's engine: open the store, fit the CNN from the stream, checkpoint every epoch, resume, report.

A run folder is in one of these states:
  running   -> run.json says "running"; state/ holds the last finished epoch's
               checkpoint (model and optimizer) and the history so far: --resume continues it
  complete  -> run.json says "complete"; every output below is written
A live train holds an exclusive lock on its run folder (runlock.py): one writer per run folder.
Final outputs, written before run.json turns complete: model.keras, model.json (the
architecture), model.weights.h5, history.csv, curves.png, metrics.json,
confusion.png, reliability.png, mistakes.png, model_card.md.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import keras
import numpy as np

from augzarr.errors import OptionError, UserError, one_line
from augzarr.storage.local import write_atomic
from augzarr.store_format import StoreAttrs, open_store
from augzarr.user_text import user_text

from .metrics import evaluate_stream, stored_images
from .distribute import PLAIN, activate, plan_devices
from .mixing import BatchMix
from .models import build_model
from .options import MODELS, OPTIMIZER_NAMES, TrainOptions
from .own_model import before_checkpoint_load, check_shapes, own_model
from .report import MISTAKES_PNG, RELIABILITY_PNG, history_csv, model_card, plot_confusion, plot_curves, plot_mistakes, plot_reliability
from .runlock import lock_run_dir, release, try_lock
from .stream import StoreStream
from .tensorboard_logs import check_available, tensorboard_callbacks

OPTIMIZERS = dict(zip(OPTIMIZER_NAMES, (keras.optimizers.RMSprop, keras.optimizers.Adam, keras.optimizers.SGD)))
RUNS_DIR = Path("runs")
MAX_BUFFER_BYTES = 2 << 30  # the stream holds about two windows of --buffer-chunks chunks
STATE_DIR = "state"


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


def now_utc() -> str:
    """An ISO time to the microsecond: runs started within one second still order by it."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def last_activity(run_json: Path, run: dict) -> str:
    """When the run last started or finished an epoch (run.json's updated_utc; for a run
    recorded before that field existed, when run.json was last written)."""
    if run.get("updated_utc"):
        return run["updated_utc"]
    mtime = datetime.datetime.fromtimestamp(run_json.stat().st_mtime, datetime.timezone.utc)
    return mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def latest_unfinished_run(held: contextlib.ExitStack, runs_dir: Path = RUNS_DIR) -> Path:
    """The unfinished run under runs_dir that was active most recently (not the last by name)
    and that no live train is writing; locked for this process on return."""
    unfinished = [(last_activity(p, run), p.parent) for p in runs_dir.glob("*/run.json") if (run := read_json(p)).get("status") == "running"]
    if not unfinished:
        raise UserError(f"--resume: no unfinished run under {runs_dir}/; name one with --out RUN_DIR")
    for _, run_dir in sorted(unfinished, reverse=True):
        fd = try_lock(run_dir)
        if fd is not None:
            held.callback(release, fd)
            return run_dir
    live = ", ".join(str(d) for _, d in sorted(unfinished, reverse=True))
    raise UserError(f"--resume: every unfinished run under {runs_dir}/ is being written by a live train right now ({live}); "
                    "wait for one to stop, or name one with --out RUN_DIR")


def mark_active(run_dir: Path) -> None:
    """Record in run.json that the run is alive now: train --resume picks the latest such run."""
    run = read_json(run_dir / "run.json")
    if run:
        write_atomic(run_dir / "run.json", json.dumps({**run, "updated_utc": now_utc()}, indent=2))


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def store_fingerprint(attrs: StoreAttrs) -> dict:
    """What a resumed run checks: the same store contents, not merely the same path."""
    return {"identity": attrs.identity, "content_hash": attrs.source.content_hash, "chunk_crc32": attrs.chunk_crc32}


def store_source(attrs: StoreAttrs) -> dict:
    """Where the store's images came from: evaluate --source recognises that folder (by path or
    by content hash) and warns that a score on it is not a held-out score."""
    return {key: getattr(attrs.source, key) for key in ("kind", "location", "content_hash", "limit")}


def seed_everything(seed: int) -> None:
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()  # same seed and store -> same run on this machine


def check_model_fits_store(model: keras.Model, attrs: StoreAttrs, where: str) -> None:
    """The model takes the store's images (a dimension left None takes any size) into its classes: own_model's rule."""
    check_shapes(where, model.input_shape, model.output_shape, tuple(attrs.image_shape), attrs.n_classes,
                 "use a store built like the model's, or train a new model")


def recorded_options(run: dict) -> TrainOptions | None:
    """The options a run recorded, normalised (a run recorded before an option existed had its default, one recorded
    before normalising had --online as typed); None for a record that is not a run's."""
    known = {f.name for f in fields(TrainOptions)}
    try:
        return TrainOptions(**{**asdict(TrainOptions()), **{k: v for k, v in run.get("options", {}).items() if k in known}}).normalised()
    except (TypeError, ValueError, AttributeError):
        return None


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: save model and optimizer, then the history, then drop older checkpoints.
    progress.json names the checkpoint, and it is replaced atomically, so a kill at any point
    leaves the last finished epoch loadable."""

    def __init__(self, run_dir: Path, history: list[dict], images_per_epoch: int = 0):
        super().__init__()
        self.state_dir = run_dir / STATE_DIR
        self.run_dir = run_dir
        self.history = history
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.started = self.trained = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.trained = time.perf_counter()  # the rate counts training steps only, not validation

    def on_epoch_end(self, epoch, logs=None):
        if self.images_per_epoch and logs is not None and self.trained > self.started:
            # into the logs, so Keras' epoch line shows it too (this callback runs before the progress bar)
            logs["images_per_second"] = round(self.images_per_epoch / (self.trained - self.started), 1)
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        row["seconds"] = round(time.perf_counter() - self.started, 2)
        self.history.append(row)
        name = f"epoch-{epoch + 1:04d}.keras"
        self.model.save(self.state_dir / name)
        write_atomic(self.state_dir / "progress.json", json.dumps({"epochs_done": epoch + 1, "checkpoint": name, "history": self.history}))
        for old in self.state_dir.glob("epoch-*.keras"):
            if old.name != name:
                old.unlink()
        write_atomic(self.run_dir / "history.csv", history_csv(self.history))
        mark_active(self.run_dir)


def initial_learning_rate(options: TrainOptions) -> float:
    return options.learning_rate or float(OPTIMIZERS[options.optimizer]().get_config()["learning_rate"])


def make_optimizer(options: TrainOptions, steps: int) -> keras.optimizers.Optimizer:
    """The optimizer at --learning-rate (or its Keras default), cosine-decayed to 0 over `steps`
    (the default) or constant: a constant RMSprop rate of 1e-3 leaves the validation accuracy
    swinging by +-2 points between late epochs (BENCHMARKS.md); decaying it settles training."""
    rate = initial_learning_rate(options)
    if options.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(initial_learning_rate=rate, decay_steps=steps)
    return OPTIMIZERS[options.optimizer](learning_rate=rate)


def compiled_model(options: TrainOptions, attrs: StoreAttrs, scope, steps: int, say) -> tuple[keras.Model, dict]:
    """The model --model names (built in, or the user's own: own_model.py), compiled by train with its
    optimizer, learning-rate schedule and loss, and what run.json records of it. A user's model that came
    compiled is compiled again, so that --optimizer, --learning-rate, --lr-schedule and --mix act on it too."""
    with scope:
        if options.model in MODELS:
            model = build_model(options.model, tuple(attrs.image_shape), attrs.n_classes, options.keras_augment, options.seed)
            info = {"spec": options.model, "kind": "built-in"}
        else:
            model, info = own_model(options.model, tuple(attrs.image_shape), attrs.n_classes)
            if info.get("came_compiled"):
                say(f"--model {options.model}: the model came compiled; train compiles it again with --optimizer "
                    f"{options.optimizer} ({options.lr_schedule} rate) and its own loss and accuracy metric")
        optimizer = make_optimizer(options, steps=steps)
        # mixed batches carry soft labels: one-hot rows for every stream, and the loss for them
        loss = "categorical_crossentropy" if options.mix else "sparse_categorical_crossentropy"
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model, {**info, "name": model.name}


def warn_on_stderr(text: str) -> None:
    print(f"warning: {one_line(text)}", file=sys.stderr)  # under --quiet too


def find_run_to_resume(out: Path | None, held: contextlib.ExitStack) -> tuple[Path, dict]:
    """The run to continue, locked for this process first (a live run is refused), then read."""
    run_dir = out or latest_unfinished_run(held)
    if out is not None and out.is_dir():
        held.callback(release, lock_run_dir(out))
    run = read_json(run_dir / "run.json")
    if not run:
        raise UserError(f"--resume: {run_dir} is not a train run folder (no readable run.json)")
    if run.get("status") == "complete":
        raise UserError(f"--resume: {run_dir} is already complete; start a new run with another --out")
    return run_dir, run


def claim_run_dir(out: Path | None, record: dict, held: contextlib.ExitStack) -> Path:
    """A new, empty run folder (never one that holds anything), locked for this process, with
    run.json saying "running" written first: a run killed from then on can be resumed (from
    scratch if no epoch finished). A run that fails with an error before its first epoch finished
    gives the folder back as it found it (given_back_on_failure)."""
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
    if run_dir.is_dir() and any(not entry.name.endswith(".tmp") for entry in run_dir.iterdir()):  # a .tmp: cut short before it counted
        status = read_json(run_dir / "run.json").get("status")
        hint = "continue it with --resume" if status == "running" else "choose another --out"
        raise UserError(f"--out {run_dir} already holds {'a run' if status else 'files'}: {hint}")
    run_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(given_back_on_failure(run_dir, found))
    write_atomic(run_dir / "run.json", json.dumps({"status": "running", "run_dir": str(run_dir), "updated_utc": now_utc(), **record}, indent=2))
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
        if not (run_dir / STATE_DIR / "progress.json").exists():
            for entry in [run_dir] if found is None else [e for e in run_dir.iterdir() if e not in found]:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        raise


def train_run(given: dict, out: Path | None = None, resume: bool = False, verbose: int | str = "auto",
              say=print, intended_use: str | None = None, warn=warn_on_stderr) -> TrainResult:
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


def train_locked(given: dict, out: Path | None, resume: bool, verbose: int | str, say, held: contextlib.ExitStack,
                 intended_use: str | None = None, warn=warn_on_stderr) -> TrainResult:
    """Every check that can refuse the run comes before claim_run_dir (a resume claims nothing new)."""
    unknown = set(given) - {f.name for f in fields(TrainOptions)}
    if unknown:
        raise ValueError(f"unknown train options {sorted(unknown)}")
    options = TrainOptions(**given)
    options.validate()  # before touching any folder
    options = options.normalised()  # what runs is what run.json records, and what a resume compares
    intended_use = user_text(intended_use, "--intended-use")
    interrupted = read_json(out / "run.json") if out is not None and not resume else {}
    if interrupted.get("status") == "running" and recorded_options(interrupted) == options:
        resume = True  # the very command that was interrupted, run again: it continues, as build-aug's does
    if resume:
        run_dir, run = find_run_to_resume(out, held)
        recorded = recorded_options(run)
        if recorded is None:
            raise UserError(f"--resume: {run_dir}/run.json records no options train can read; start a new run with another --out")
        wanted = TrainOptions(**{**asdict(recorded), **given})
        wanted.validate()
        wanted = wanted.normalised()
        conflicts = [f"--{k.replace('_', '-')} {getattr(recorded, k)} -> {getattr(wanted, k)}" for k in given
                     if k != "epochs" and getattr(recorded, k) != getattr(wanted, k)]
        if conflicts:
            raise UserError(f"--resume: {run_dir} was started with other options ({'; '.join(conflicts)}); resume it with its own, only --epochs may change")
        options = wanted
        intended_use = intended_use or run.get("intended_use")

    store = open_store(options.store)
    attrs = store.attrs
    train_rows, val_rows, test_rows = (store.rows(split) for split in ("train", "val", "test"))
    if train_rows == 0:
        raise UserError(f"store {options.store} has no training rows: rebuild it with build-aug")
    if val_rows == 0 and test_rows == 0:
        raise UserError(f"store {options.store} has neither validation nor test rows to judge the model: rebuild it with --val-fraction above 0")
    chunk_bytes = int(np.prod(store.images("train").chunks))
    if options.buffer_chunks * chunk_bytes > MAX_BUFFER_BYTES:
        raise OptionError(f"--buffer-chunks {options.buffer_chunks} would hold {options.buffer_chunks * chunk_bytes / 2**30:,.1f} GiB "
                        f"per window of this store; use at most {MAX_BUFFER_BYTES // chunk_bytes}")
    if resume:
        progress = read_json(run_dir / STATE_DIR / "progress.json")
        done = progress.get("epochs_done", 0)
        if options.epochs < done:
            raise UserError(f"--epochs {options.epochs} is fewer than the {done} epochs {run_dir} has already finished")
        if run["store_fingerprint"] != store_fingerprint(attrs):
            raise UserError(f"--resume: the store {options.store} is not the one {run_dir} started with; resume with that store or start a new run")
    # --distribute: the devices settled (and refused) first; then the model is built (or loaded) and compiled in the strategy's scope
    placement = plan_devices(options.device_list, warn) if options.distribute else PLAIN
    split_by = placement.batch_multiple
    if options.batch_size % split_by:
        raise OptionError(f"--batch-size {options.batch_size} does not split evenly over the {split_by} devices: use a multiple of {split_by}")
    if options.tensorboard:
        check_available()
    scope, shard = activate(placement)
    steps = options.epochs * -(-train_rows // options.batch_size)
    if not resume:  # the model first: a --model file that cannot be used, or a model that does not fit, leaves no run folder behind
        seed_everything(options.seed)
        model, model_info = compiled_model(options, attrs, scope, steps, say)
        check_model_fits_store(model, attrs, f"--model {options.model}")
        run_dir = claim_run_dir(out, {"options": asdict(options), "store_fingerprint": store_fingerprint(attrs),
                                      "store_source": store_source(attrs)}, held)
        progress, done = {}, 0
    else:
        state_dir = run_dir / STATE_DIR
        if done:
            before_checkpoint_load(run.get("model"))  # an own model's custom layers, registered by its file
            with scope:
                model = keras.models.load_model(state_dir / progress["checkpoint"])
            model_info = run.get("model") or {"spec": options.model, "kind": "built-in"}
            check_model_fits_store(model, attrs, f"the checkpoint of {run_dir}")
        else:
            seed_everything(options.seed)
            model, model_info = compiled_model(options, attrs, scope, steps, say)
            check_model_fits_store(model, attrs, f"--model {options.model}")
            recorded_model = run.get("model") or {}
            if recorded_model.get("sha256") not in (None, model_info.get("sha256")):
                raise UserError(f"--resume: {recorded_model.get('file')} has changed since {run_dir} started (its sha256 differs); "
                                "put the original back, or start a new run")
        say(f"resuming {run_dir} after epoch {done} of {options.epochs}")
        if done:
            seed_everything(options.seed + done)  # dropout after a resume: seeded, though not the uninterrupted run's masks
    history: list[dict] = progress.get("history", [])
    (run_dir / STATE_DIR).mkdir(exist_ok=True)

    run = {
        "status": "running",
        "run_dir": str(run_dir),
        "options": asdict(options),
        "store_fingerprint": store_fingerprint(attrs),
        "store_source": store_source(attrs),
        "updated_utc": now_utc(),
        "backend": keras.backend.backend(),
        "versions": {"keras": keras.__version__, "numpy": np.__version__},
        "parameters": model.count_params(),
        "model": {**model_info, "parameters": model.count_params()},  # which model: the spec, and for a file its sha256
        "learning_rate": initial_learning_rate(options),
        "mix_alpha": options.alpha,  # the alpha used, its default when --mix-alpha was not given
        # the devices it trained on: with "distributed", those each global batch was split over; without, the one device
        # --distribute found (None without --distribute: Keras' default device)
        "devices": list(placement.devices) or None,
        "device_count": max(1, len(placement.devices)),
        "distributed": placement.distributed,
        "train_rows": train_rows,
        "class_names": attrs.class_names,
        "image_shape": attrs.image_shape,
        "intended_use": intended_use,  # train --intended-use, for the model card; None: not stated
    }
    write_atomic(run_dir / "run.json", json.dumps(run, indent=2))

    def training_stream() -> StoreStream:
        return StoreStream(store, "train", options.batch_size, shuffle=True, seed=options.seed,
                           start_epoch=done, buffer_chunks=options.buffer_chunks, online=options.online_ops,
                           mix=BatchMix(options.mix, options.alpha, attrs.n_classes, options.seed) if options.mix else None,
                           shard=shard, batch_multiple=split_by)

    train_stream = training_stream()
    # --tensorboard: its images come from a second stream made the same way (tensorboard_logs.StreamedImages)
    image_stream = training_stream() if options.tensorboard else None
    extra_callbacks = tensorboard_callbacks(run_dir, image_stream, done) if image_stream is not None else []
    val_stream = StoreStream(store, "val", options.batch_size, shuffle=False, soft_labels=bool(options.mix),
                             batch_multiple=split_by) if val_rows else None
    if not val_rows:
        say("the store has no validation rows: no validation during training")
    try:
        if done < options.epochs:
            with stream_errors(train_stream, val_stream):
                model.fit(
                    train_stream.fit_input(),  # on TensorFlow, the same batches fed a window at a time (stream.py)
                    steps_per_epoch=train_stream.batches_per_epoch,
                    epochs=options.epochs,
                    initial_epoch=done,
                    validation_data=val_stream,
                    shuffle=False,  # the stream shuffles; Keras would reorder batch indices
                    # TensorBoard's callbacks before the checkpoint: killed between the two, an epoch is logged twice, never lost
                    callbacks=[*extra_callbacks, EpochCheckpoint(run_dir, history, images_per_epoch=train_rows)],
                    verbose=verbose,
                )
        evaluated_on = "test" if test_rows else "val"
        if not test_rows:
            say("the store has no test split: evaluating on the validation split instead")
        eval_stream = StoreStream(store, evaluated_on, options.batch_size, shuffle=False, batch_multiple=split_by)
        with stream_errors(eval_stream):
            metrics = evaluate_stream(model, eval_stream, attrs.class_names)
        eval_stream.close()
    finally:
        train_stream.close()
        if image_stream is not None:
            image_stream.close()
        if val_stream is not None:
            val_stream.close()

    mistakes = stored_images(store, evaluated_on, [m["row"] for m in metrics["confidently_wrong"]])
    write_outputs(run_dir, model, run, attrs, metrics, history, evaluated_on, mistakes)
    return TrainResult(run_dir=run_dir, metrics=metrics, evaluated_on=evaluated_on, history=history, resumed_from=done)


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


def write_outputs(run_dir: Path, model: keras.Model, run: dict, attrs: StoreAttrs, metrics: dict, history: list[dict], evaluated_on: str,
                  mistake_images: np.ndarray | None = None) -> None:
    """Every final output, then run.json marked complete: a run folder never claims more than it holds.
    mistake_images: the images of metrics["confidently_wrong"], in its order."""
    run = {**run, "evaluated_on": evaluated_on}
    model.save(run_dir / "model.keras")
    (run_dir / "model.json").write_text(model.to_json(indent=2))
    model.save_weights(run_dir / "model.weights.h5")
    write_atomic(run_dir / "history.csv", history_csv(history))
    if history:
        plot_curves(history, run_dir / "curves.png")
    (run_dir / "metrics.json").write_text(json.dumps({"evaluated_on": evaluated_on, **metrics}, indent=2))
    plot_confusion(metrics, run_dir / "confusion.png", f"{run['options']['model']} on {evaluated_on}: accuracy {metrics['accuracy']:.3f}")
    title = f"{run['options']['model']} on {evaluated_on}"
    plot_reliability(metrics["calibration"], run_dir / RELIABILITY_PNG, title)
    plot_mistakes(mistake_images if mistake_images is not None else np.zeros((0, 1, 1, 1), np.uint8), metrics["confidently_wrong"],
                  run_dir / MISTAKES_PNG, f"{title}: the most confident mistakes")
    (run_dir / "model_card.md").write_text(model_card(run, attrs, metrics, history))
    write_atomic(run_dir / "run.json", json.dumps({**run, "status": "complete", "updated_utc": now_utc(), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
