"""Command-line entry points: build-aug and inspect-aug. Thin: parse options, call the library."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from augzarr.cli_support import run_app
from augzarr.errors import OptionError, UserError
from augzarr.wording import SHOWN_LINES, count
from augzarr.store_format import open_store

from .progress import ConsoleReporter, Reporter
from .summary import format_summary, human_bytes, summarize

build_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
inspect_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@build_app.command()
def build_aug(
    source: str = typer.Option("cifar10", help="'cifar10', 'cifar100', 'mnist' or 'fashion_mnist' (keras.datasets and its cache), the official cifar-10-python.tar.gz or its extracted folder, or an image folder DIR/<class>/<image> or DIR/train/<class>/... (optional DIR/test/, DIR/val/ or DIR/valid/)."),
    label_mode: Optional[str] = typer.Option(None, help="--source cifar100 only: 'fine' (100 classes) or 'coarse' (20 superclasses); fine when not given."),
    copies: int = typer.Option(5, help="Augmented copies of each training image (0: the originals only, a baseline)."),
    include_original: bool = typer.Option(True, "--include-original/--no-include-original", help="Store each original as copy 0."),
    policy: str = typer.Option("crop-flip", help="Preset: crop-flip (pad 1/8 of the side, random crop, flip), crop-flip-cutout (then a 16x16 grey hole at 32x32), randaugment (2 of 14 operations per copy, then crop-flip; README) or notebook (the notebook's ImageDataGenerator settings, which train worse here: BENCHMARKS.md), or a .json/.yaml file saved with albumentations.save()."),
    val_fraction: float = typer.Option(0.2, help="Fraction of training images held out (stratified) for validation, before augmenting; unused when the image folder has its own val/ or valid/."),
    out: str = typer.Option("data/aug.zarr", help="The zarr store to write: a folder, or an object-store URL (s3://BUCKET/PREFIX/aug.zarr, gs://, az://; README: Object storage)."),
    chunk_size: Optional[int] = typer.Option(None, help="Rows per chunk [default: ~4 MiB of pixels, 1024 at 32x32]."),
    image_size: Optional[int] = typer.Option(None, help="Resize every image to NxN (needed when image sizes differ)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training images (for quick trials)."),
    seed: int = typer.Option(0, help="Seed for the split, the row order and every augmentation."),
    workers: Optional[int] = typer.Option(None, help="Worker processes [default: all cores]; the store's bytes do not depend on it."),
    overwrite: bool = typer.Option(False, help="Replace a complete store, or restart an unfinished build with other arguments."),
    skip_bad: bool = typer.Option(False, help="Leave out images that cannot be read or decoded (listed at the end and in the store's attrs) instead of stopping."),
    license: Optional[str] = typer.Option(None, "--license", help="The terms the source images are under (a license name, a link), recorded in the store and repeated in every model card trained from it."),
    provenance: Optional[str] = typer.Option(None, help="Where the images came from and whether the people in them consented, recorded in the store and repeated in every model card trained from it."),
    preview: int = typer.Option(8, help="Training images to write as previews (0 for none)."),
    preview_dir: Path = typer.Option(Path("preview"), help="Where previews go."),
    quiet: bool = typer.Option(False, help="No progress bar and no summary line."),
    scheduler: Optional[str] = typer.Option(None, help="Compute the chunks on a Dask cluster: its scheduler's address (tcp://HOST:8786), or 'local' to start one here [default: $AUGZARR_SCHEDULER, else $DASK_SCHEDULER_ADDRESS, else this machine's processes]."),
) -> None:
    """Pre-generate augmented copies of every training image into a chunked zarr store."""
    from .build import BuildOptions, build_store  # albumentations loads only when building
    from .cluster import scheduler_address
    from .preview import missing_previews, write_previews

    check_preview_options(preview, preview_dir)
    reporter = Reporter() if quiet else ConsoleReporter()
    options = BuildOptions(
        source=source, label_mode=label_mode, out=out, copies=copies, include_original=include_original, policy=policy,
        val_fraction=val_fraction, seed=seed, chunk_size=chunk_size, image_size=image_size, limit=limit,
        workers=workers, overwrite=overwrite, skip_bad=skip_bad, license=license, provenance=provenance, preview_dir=preview_dir if preview else None,
        scheduler=scheduler_address(scheduler),
    )
    result = build_store(options, reporter)
    if result.status == "already complete":
        group = open_store(out).group
        if preview and missing_previews(group, preview, preview_dir):  # deleted since, or a build stopped before writing them
            written = write_previews(group, preview, preview_dir)
            reporter.message(f"{result.out} is already complete with these arguments; its previews were missing: wrote {len(written)} in {preview_dir}/")
        else:
            reporter.message(f"{result.out} is already complete with these arguments; nothing to do (--overwrite rebuilds it)")
        return
    written = write_previews(open_store(out).group, preview, preview_dir)
    rows = ", ".join(f"{n:,} {split}" for split, n in result.rows.items())
    ratio = result.raw_bytes / result.bytes_on_disk if result.bytes_on_disk else 0
    reporter.message(
        f"{result.status} {result.out}: {rows} rows ({result.computed_rows:,} computed) in {result.seconds:.1f} s, "
        f"{human_bytes(result.bytes_on_disk)} on disk (compression {ratio:.2f}x)"
        + (f"; {count(len(written), 'preview')} in {preview_dir}/" if written else "")
        + (f"; source layout {result.layout}" if result.layout else "")
    )
    if result.ignored:
        shown = "listed above and" if len(result.ignored) <= SHOWN_LINES else f"the first {SHOWN_LINES} listed above, all"
        reporter.message(f"{count(len(result.ignored), 'file or folder', 'files or folders')} of the source "
                         f"{'was' if len(result.ignored) == 1 else 'were'} not used ({shown} in the store's attrs 'source.ignored')")
    if result.skipped:
        for entry in result.skipped[:SHOWN_LINES]:
            reporter.warning(f"skipped: {entry['reason']}")
        shown = "listed above and" if len(result.skipped) <= SHOWN_LINES else f"the first {SHOWN_LINES} listed above, all"
        reporter.message(f"{count(len(result.skipped), 'bad image')} skipped (--skip-bad; {shown} in the store's attrs 'skipped')")
    for warning in result.warnings:
        reporter.warning(warning)


MAX_PREVIEW = 256  # rows of the contact sheet


def check_preview_options(preview: int, preview_dir: Path) -> None:
    if not 0 <= preview <= MAX_PREVIEW:
        raise OptionError(f"--preview must be in [0, {MAX_PREVIEW}]")
    if preview and preview_dir.exists() and not preview_dir.is_dir():
        raise UserError(f"--preview-dir {preview_dir} is a file; give a folder for the previews")
    if preview:
        check_writable(preview_dir)


def check_writable(preview_dir: Path) -> None:
    """Write a probe file, as the previews will: the only test that holds for every cause
    (a file on the path, permissions, a read-only mount, root's powers dropped)."""
    try:
        preview_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=preview_dir, prefix=".augzarr-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"--preview-dir {preview_dir} cannot be written ({exc.strerror or exc}): "
                        "choose a writable folder for the previews, or pass --preview 0") from None


@inspect_app.command()
def inspect_aug(
    store: str = typer.Option("data/aug.zarr", help="The store to describe: a folder or an object-store URL."),
    preview: int = typer.Option(0, help="Also write previews of this many training images."),
    preview_dir: Path = typer.Option(Path("preview"), help="Where previews go."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    verify: bool = typer.Option(False, help="Read every chunk back and check it against the checksums recorded at build time."),
) -> None:
    """Summarize a store: counts per split and class, policy, source, size on disk."""
    check_preview_options(preview, preview_dir)
    if verify:
        from .verify import verify_store

        opened = open_store(store, check_chunks=False)  # verify_store reports damaged chunks itself, with the rest
        checked, problems = verify_store(opened)
        for problem in problems[:SHOWN_LINES]:
            print(f"damaged: {problem}", file=sys.stderr)
        if problems:
            shown = " above" if len(problems) <= SHOWN_LINES else f", the first {SHOWN_LINES} above"
            raise UserError(f"store {store} failed verification ({count(len(problems), 'problem')}{shown}); "
                            "rebuild it with build-aug --overwrite")
        rows_note = "" if opened.attrs.array_crc32 is not None else " (no per-row array checksums recorded in this store)"
        print(f"verified {opened.location}: all {count(checked, 'image chunk')} and the per-row arrays match the checksums recorded at build time{rows_note}")
        return
    opened = open_store(store)
    summary = summarize(opened)
    print(json.dumps(summary, indent=2) if as_json else format_summary(summary))
    if preview > 0:
        from .preview import write_previews

        written = write_previews(opened.group, preview, preview_dir)
        print(f"wrote {count(len(written), 'preview')} to {preview_dir}/")


def main_build() -> None:
    run_app(build_app, "build-aug")


def main_inspect() -> None:
    run_app(inspect_app, "inspect-aug")
