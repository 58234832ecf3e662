"""Command-line entry points: train and evaluate. Thin: parse options, call the library."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from augzarr.cli_support import run_app
from augzarr.wording import count

from .options import MAX_BATCH

train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
evaluate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@train_app.command()
def train(
    store: Optional[str] = typer.Option(None, help="The augzarr store to train from: a folder or an object-store URL (s3://...) [default: data/aug.zarr]."),
    model: Optional[str] = typer.Option(None, help="deep (the notebook's second network) or shallow (its first); or your own: PATH.py:FUNCTION (FUNCTION(image_shape, n_classes) returns a Keras model) or PATH.keras (a saved model that fits the store) [default: deep]."),
    epochs: Optional[int] = typer.Option(None, help="Passes over the store's training rows [default: 20]."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step [default: 128]."),
    optimizer: Optional[str] = typer.Option(None, help="rmsprop, adam or sgd [default: rmsprop]."),
    learning_rate: Optional[float] = typer.Option(None, help="[default: the optimizer's Keras default, 0.001 for rmsprop]"),
    lr_schedule: Optional[str] = typer.Option(None, help="cosine (the rate decays to 0 over the run) or constant (the notebook's) [default: cosine]."),
    seed: Optional[int] = typer.Option(None, help="Seeds weights, dropout and the stream's order [default: 0]."),
    buffer_chunks: Optional[int] = typer.Option(None, help="Chunks shuffled together in the stream [default: 8]."),
    mix: Optional[str] = typer.Option(None, help="Mix each training batch with a shuffled copy of itself, labels made soft: mixup or cutmix [default: none]."),
    mix_alpha: Optional[float] = typer.Option(None, help="The mix's Beta(alpha, alpha) parameter [default: 0.2 for mixup, 1.0 for cutmix]."),
    keras_augment: Optional[str] = typer.Option(None, help="Online augmentation by Keras preprocessing layers in the model (the usual alternative to stored copies): crop-flip or randaugment [default: none]."),
    distribute: Optional[bool] = typer.Option(None, "--distribute/--no-distribute", help="Train data-parallel over every local accelerator (MirroredStrategy on TensorFlow, DataParallel on JAX); --batch-size is then the global batch [default: off]."),
    devices: Optional[str] = typer.Option(None, help="With --distribute: the devices to use, comma-separated (as TensorFlow or JAX names them) [default: every accelerator, else every CPU device]."),
    online: Optional[str] = typer.Option(None, help="Random operations on each training batch as it is streamed, comma-separated: flip, shift (up to 1/8 of the side), erase (cutout of a quarter of the side) [default: none]."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help="Write TensorBoard logs into RUN/tensorboard: loss, accuracy and learning rate per epoch, and a few training images as streamed [default: off]."),
    out: Optional[Path] = typer.Option(None, help="Run folder [default: runs/<timestamp>; with --resume, the unfinished run active most recently that no live train is writing]."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished epoch."),
    quiet: bool = typer.Option(False, help="No per-epoch progress."),
    intended_use: Optional[str] = typer.Option(None, help="What the model is for and what it must not be used for, in your words: the model card's 'Intended use and out-of-scope uses' section [default: a placeholder saying it was not given]."),
) -> None:
    """Stream a store into the CNN, validate every epoch, evaluate, and write a run folder."""
    from .options import TrainOptions

    given = {k: v for k, v in dict(store=store, model=model, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                                    learning_rate=learning_rate, lr_schedule=lr_schedule, seed=seed,
                                    buffer_chunks=buffer_chunks, online=online, mix=mix, mix_alpha=mix_alpha,
                                    keras_augment=keras_augment, distribute=distribute, devices=devices,
                                    tensorboard=tensorboard).items() if v is not None}
    TrainOptions(**given).validate()  # at once, before Keras takes seconds to load
    from augzarr.user_text import user_text

    user_text(intended_use, "--intended-use")
    from .runlock import is_live, live_run_message

    if out is not None and out.is_dir() and is_live(out):  # likewise a live run (train_run takes the lock itself)
        from augzarr.errors import UserError

        raise UserError(live_run_message(out))
    import_keras_quietly()
    from .training import train_run

    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    result = train_run(given, out=out, resume=resume, verbose=0 if quiet else ("auto" if sys.stdout.isatty() else 2), say=say,
                       intended_use=intended_use)
    metrics = result.metrics
    # the notebook's two lines, always printed
    print(f"Test score: {metrics['loss']:.4f}")
    print(f"Test accuracy: {metrics['accuracy']:.4f}")
    say(f"({result.evaluated_on} split, {count(metrics['count'], 'image')}); run folder: {result.run_dir}")


@evaluate_app.command()
def evaluate(
    model: Path = typer.Option(..., help="A finished run folder (train --out)."),
    store: Optional[str] = typer.Option(None, help="Evaluate on this store's test split (val when it has none): a folder or an object-store URL."),
    source: Optional[Path] = typer.Option(None, help="Or on an image folder DIR/<class>/<image> with the model's classes."),
    split: Optional[str] = typer.Option(None, help="With --store: test or val [default: test, else val]."),
    batch_size: int = typer.Option(256, help="Images per prediction step."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file, with a reliability diagram and a grid of the most confident mistakes beside it (NAME-reliability.png, NAME-mistakes.png)."),
) -> None:
    """Loss, accuracy and per-class accuracy of a trained model."""
    from augzarr.errors import OptionError, UserError, one_line

    if (store is None) == (source is None):
        raise OptionError("give exactly one of --store PATH or --source DIR")
    if split not in (None, "test", "val"):
        raise typer.BadParameter("must be test or val", param_hint="--split")
    if split is not None and source is not None:
        raise OptionError("--split applies to --store only; an image folder is evaluated on its test/ part, else its val/ part, else all its images")
    if not 1 <= batch_size <= MAX_BATCH:
        raise OptionError(f"--batch-size must be in [1, {MAX_BATCH}]")
    if json_out is not None and json_out.is_dir():
        raise UserError(f"--json {json_out} is a folder; give a file name for the results")
    import_keras_quietly()
    from .evaluate import evaluate_on_folder, evaluate_on_store, format_metrics, resize_note, training_note, training_warning, write_reports

    if store is not None:
        metrics, mistake_images = evaluate_on_store(model, store, split, batch_size)
    else:
        metrics, mistake_images = evaluate_on_folder(model, source, batch_size)
    print(f"{metrics['model']} on {metrics['data']}, {count(metrics['count'], 'image')}")
    if resize_note(metrics):
        print(resize_note(metrics))
    if training_warning(metrics, source):
        print("warning: " + one_line(training_warning(metrics, source)), file=sys.stderr)
    if training_note(metrics):
        print(one_line(training_note(metrics)), file=sys.stderr)
    print(format_metrics(metrics))
    if json_out is not None:
        written = write_reports(metrics, json_out, mistake_images)
        print(f"wrote {', '.join(str(path) for path in written)}")


def import_keras_quietly() -> None:
    """Import Keras with TensorFlow's C++ start-up lines (oneDNN, absl) kept off the terminal;
    they are shown if the import fails."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def main_train() -> None:
    run_app(train_app, "train", resume_hint="run the same command again (or train --resume --out RUN_DIR) to continue from the last finished epoch")


def main_evaluate() -> None:
    # evaluate writes nothing until its results (--json, written whole): there is nothing to resume
    run_app(evaluate_app, "evaluate", resume_hint="run it again",
            interrupted="interrupted: nothing was evaluated or written; run it again for the results")
