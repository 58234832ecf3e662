"""Command-line entry points: build-aug and inspect-aug. Thin: parse options, call the library."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import typer

from augzarr.cli_support import run_app
from augzarr.errors import UserError
from augzarr.options import check_fields, command
from augzarr.store_format import open_store
from augzarr.wording import SHOWN_LINES, count

from .options import BUILD_AUG, INSPECT_AUG, BuildAugOptions, BuildOptions, InspectOptions
from .progress import ConsoleReporter, Reporter
from .summary import format_summary, human_bytes, summarize

build_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
inspect_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@command(build_app, *BUILD_AUG)
def build_aug(options: BuildOptions, shown: BuildAugOptions) -> None:
    """Pre-generate augmented copies of every training image into a chunked zarr store."""
    from .build import build_store  # albumentations loads only when building
    from .cluster import scheduler_address
    from .preview import missing_previews, write_previews

    options.validate()  # every option before any folder is touched
    check_fields(shown)
    check_preview_folder(shown.preview, shown.preview_dir)
    reporter = Reporter() if shown.quiet else ConsoleReporter()
    options.preview_dir = shown.preview_dir if shown.preview else None
    options.scheduler = scheduler_address(options.scheduler)
    out, preview, preview_dir = options.out, shown.preview, shown.preview_dir
    result = build_store(options, reporter)
    if result.status == "already complete":
        group = open_store(out).group
        if preview and missing_previews(
            group, preview, preview_dir
        ):  # deleted since, or a build stopped before writing them
            written = write_previews(group, preview, preview_dir)
            reporter.message(
                f"{result.out} is already complete with these arguments; its previews were missing: wrote {len(written)} in {preview_dir}/"
            )
        else:
            reporter.message(
                f"{result.out} is already complete with these arguments; nothing to do (--overwrite rebuilds it)"
            )
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
        shown = (
            "listed above and" if len(result.ignored) <= SHOWN_LINES else f"the first {SHOWN_LINES} listed above, all"
        )
        reporter.message(
            f"{count(len(result.ignored), 'file or folder', 'files or folders')} of the source "
            f"{'was' if len(result.ignored) == 1 else 'were'} not used ({shown} in the store's attrs 'source.ignored')"
        )
    if result.skipped:
        for entry in result.skipped[:SHOWN_LINES]:
            reporter.warning(f"skipped: {entry['reason']}")
        shown = (
            "listed above and" if len(result.skipped) <= SHOWN_LINES else f"the first {SHOWN_LINES} listed above, all"
        )
        reporter.message(
            f"{count(len(result.skipped), 'bad image')} skipped (--skip-bad; {shown} in the store's attrs 'skipped')"
        )
    for warning in result.warnings:
        reporter.warning(warning)


def check_preview_folder(preview: int, preview_dir: Path) -> None:
    """A folder the previews can be written to, before any work."""
    if preview and preview_dir.exists() and not preview_dir.is_dir():
        raise UserError(f"--preview-dir {preview_dir} is a file; give a folder for the previews")
    if preview:
        check_writable(preview_dir)


def check_writable(preview_dir: Path) -> None:
    """Write a probe file, as the previews will: the only test that holds for every cause
    (a file on the path, permissions, a read-only mount, root's powers dropped). The folders the probe makes are
    removed again: a build refused later leaves none behind (the previews make them when they are written)."""
    made = [folder for folder in (preview_dir, *preview_dir.parents) if not folder.exists()]
    try:
        preview_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=preview_dir, prefix=".augzarr-probe-"):
            pass
        for folder in made:  # deepest first
            folder.rmdir()
    except OSError as exc:
        raise UserError(
            f"--preview-dir {preview_dir} cannot be written ({exc.strerror or exc}): "
            "choose a writable folder for the previews, or pass --preview 0"
        ) from None


@command(inspect_app, *INSPECT_AUG)
def inspect_aug(options: InspectOptions) -> None:
    """Summarize a store: counts per split and class, policy, source, size on disk."""
    check_fields(options)
    check_preview_folder(options.preview, options.preview_dir)
    store, preview, preview_dir = options.store, options.preview, options.preview_dir
    if options.verify:
        from .verify import verify_store

        opened = open_store(store, check_chunks=False)  # verify_store reports damaged chunks itself, with the rest
        checked, problems = verify_store(opened)
        for problem in problems[:SHOWN_LINES]:
            print(f"damaged: {problem}", file=sys.stderr)
        if problems:
            shown = " above" if len(problems) <= SHOWN_LINES else f", the first {SHOWN_LINES} above"
            raise UserError(
                f"store {store} failed verification ({count(len(problems), 'problem')}{shown}); "
                "rebuild it with build-aug --overwrite"
            )
        rows_note = (
            "" if opened.attrs.array_crc32 is not None else " (no per-row array checksums recorded in this store)"
        )
        print(
            f"verified {opened.location}: all {count(checked, 'image chunk')} and the per-row arrays match the checksums recorded at build time{rows_note}"
        )
        return
    opened = open_store(store)
    summary = summarize(opened)
    print(json.dumps(summary, indent=2) if options.as_json else format_summary(summary))
    if preview > 0:
        from .preview import write_previews

        written = write_previews(opened.group, preview, preview_dir)
        print(f"wrote {count(len(written), 'preview')} to {preview_dir}/")


def main_build() -> None:
    run_app(build_app, "build-aug")


def main_inspect() -> None:
    run_app(inspect_app, "inspect-aug")
