"""Command-line entry points: train and evaluate. Thin: parse options, call the library."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import asdict

import typer

from augzarr.cli_support import run_app
from augzarr.options import check_fields, command
from augzarr.wording import count

from .options import EVALUATE, TRAIN, EvaluateOptions, TrainOptions, TrainRunOptions

train_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
evaluate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@command(train_app, *TRAIN)
def train(options: TrainOptions, run: TrainRunOptions, given: set[str]) -> None:
    """Stream a store into the CNN, validate every epoch, evaluate, and write a run folder."""
    options.validate()  # at once, before Keras takes seconds to load
    check_fields(run)
    from .runlock import is_live, live_run_message

    if (
        run.out is not None and run.out.is_dir() and is_live(run.out)
    ):  # likewise a live run (train_run takes the lock itself)
        from augzarr.errors import UserError

        raise UserError(live_run_message(run.out))
    import_keras_quietly()
    from .training import train_run

    say = (lambda text: None) if run.quiet else (lambda text: print(text, flush=True))
    # only what was given: a resumed run keeps its own settings for the rest
    settings = {name: value for name, value in asdict(options).items() if name in given}
    result = train_run(
        settings,
        out=run.out,
        resume=run.resume,
        verbose=0 if run.quiet else ("auto" if sys.stdout.isatty() else 2),
        say=say,
        intended_use=run.intended_use,
    )
    metrics = result.metrics
    # the notebook's two lines, always printed
    print(f"Test score: {metrics['loss']:.4f}")
    print(f"Test accuracy: {metrics['accuracy']:.4f}")
    say(f"({result.evaluated_on} split, {count(metrics['count'], 'image')}); run folder: {result.run_dir}")


@command(evaluate_app, *EVALUATE)
def evaluate(options: EvaluateOptions) -> None:
    """Loss, accuracy and per-class accuracy of a trained model."""
    from augzarr.errors import one_line

    options.validate()
    import_keras_quietly()
    from .evaluate import (
        evaluate_on_source,
        evaluate_on_store,
        format_metrics,
        resize_note,
        training_note,
        training_warning,
        write_reports,
    )

    if options.store is not None:
        metrics, mistake_images = evaluate_on_store(options.model, options.store, options.split, options.batch_size)
    else:
        metrics, mistake_images = evaluate_on_source(options.model, options.source, options.batch_size)
    print(f"{metrics['model']} on {metrics['data']}, {count(metrics['count'], 'image')}")
    if resize_note(metrics):
        print(resize_note(metrics))
    if training_warning(metrics, options.source):
        print("warning: " + one_line(training_warning(metrics, options.source)), file=sys.stderr)
    if training_note(metrics):
        print(one_line(training_note(metrics)), file=sys.stderr)
    print(format_metrics(metrics))
    if options.json_out is not None:
        written = write_reports(metrics, options.json_out, mistake_images)
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
    run_app(
        train_app,
        "train",
        resume_hint="run the same command again (or train --resume --out RUN_DIR) to continue from the last checkpoint",
    )


def main_evaluate() -> None:
    # evaluate writes nothing until its results (--json, written whole): there is nothing to resume
    run_app(
        evaluate_app,
        "evaluate",
        resume_hint="run it again",
        interrupted="interrupted: nothing was evaluated or written; run it again for the results",
    )
