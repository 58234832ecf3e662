"""build-aug's engine: plan the rows, decode the source, compute chunks in parallel, resume.

The output (a folder or an object-store prefix, through augzarr.storage) is in one of these states:
  absent/empty  -> a fresh build
  building      -> it holds .build/ (with build.json naming the arguments): resumed
                   when the arguments match, refused otherwise
  complete      -> an augzarr group whose attrs say complete: left alone unless --overwrite
  anything else -> refused, never deleted
The order in which a build writes, and what "complete" means, is the store format's
(augzarr/store_format.py).
"""

from __future__ import annotations

import importlib.metadata
import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from augzarr import __version__
from augzarr.codecs import CodecSpec, choose_spec, encoder_versions
from augzarr.errors import OptionError, UserError
from augzarr.images import DEFAULT_FIT, FIT_BEFORE_RECORDED
from augzarr.sources import Source, open_source
from augzarr.storage import Storage, open_storage
from augzarr.storage.objectstore import client_environment
from augzarr.store_format import (
    BUILD_DIR,
    BUILD_JSON,
    FORMAT_NAME,
    IMAGES,
    KEEP_WHEN_CLAIMING,
    ROW_ARRAYS,
    SKELETON_DONE,
    SourceInfo,
    StoreAttrs,
    codec_record,
    committed_chunks,
    create_skeleton,
    default_chunk_rows,
    format_version_for,
    mark_complete,
    open_group,
    read_raw_attrs,
    rows_per_chunk,
)
from augzarr.user_text import user_text
from augzarr.wording import SHOWN_LINES, count, shown

from .cluster import ClusterStaging, check_canary, check_store_shared, check_versions, cluster_client, run_chunks
from .layout import SplitRows, hold_out_validation, plan_rows
from .options import BuildOptions, default_workers
from .policies import STAGE_SCALES, Policy, load_policy
from .policy_check import BadSample, check_staged_policy
from .progress import Reporter
from .records import BuildIdentity, BuildRecord
from .staging import STAGE_CODEC, STAGE_ROWS, STAGE_SPEC, LocalStaging, Staging, held_temp_folder
from .tasks import ChunkResult, ChunkTask, DecodeResult, DecodeTask, WorkerConfig
from .worker import SourceRows, compute_chunk, decode_block, decode_files, init_worker

SOURCE_PREFIX = "augzarr-source-"  # this machine's temporary copy of the decoded source, for an object-store build
MAX_CHUNK_BYTES = 1 << 30  # a worker holds one chunk in memory


@dataclass
class BuildResult:
    out: str
    status: str  # "built", "resumed" or "already complete"
    rows: dict[str, int] = field(default_factory=dict)
    computed_rows: int = 0
    seconds: float = 0.0
    bytes_on_disk: int = 0
    raw_bytes: int = 0
    ignored: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # bad files left out under --skip-bad: file, reason
    layout: str | None = None  # an image folder's layout, as recorded in the store
    warnings: list[str] = field(default_factory=list)  # about the store built: printed after the summary


def check_fits(options: BuildOptions, source: Source, chunk_rows: int, storage: Storage, codec: CodecSpec) -> None:
    """Refuse, before any work, a chunk too big for memory or a store too big for the disk (object storage has no
    free space to ask about); a coded store is taken at the size its codec's least saving would leave."""
    row_bytes = int(np.prod(source.image_shape))
    if chunk_rows * row_bytes > MAX_CHUNK_BYTES:
        raise OptionError(
            f"--chunk-size {chunk_rows} makes {chunk_rows * row_bytes / 2**20:,.0f} MiB chunks; use at most "
            f"{count(MAX_CHUNK_BYTES // row_bytes, 'row')} of {'x'.join(map(str, source.image_shape))} images"
        )
    rows = len(source.train) * (options.copies + 1) + sum(
        len(s) for name, s in source.splits().items() if name != "train"
    )
    needed = rows * row_bytes // (1 if codec.is_raw else codec.least_saving)
    free = storage.free_bytes() if storage.checks_free_space else None
    if free is not None and needed > free:
        raise UserError(
            f"the store needs about {needed / 2**30:,.1f} GiB but {free / 2**30:,.1f} GiB are free for --out {storage.location}: "
            "free some space, choose another --out, or use fewer --copies"
        )


def check_trainable(options: BuildOptions, source: Source, usable: np.ndarray | None = None) -> None:
    """Refuse, before any work (and again once --skip-bad has left images out), a store that train
    would refuse: fewer than 2 classes, or nothing to judge a model on when validation was asked for."""
    labels = source.train.labels if usable is None else source.train.labels[usable]
    classes = np.unique(labels)
    if len(classes) < 2:
        what = f"--source {source.location}" + (f" with --limit {options.limit}" if options.limit else "")
        if usable is not None:
            what += " after --skip-bad left out its bad images"
        names = ", ".join(source.class_names[c] for c in classes) or "none"
        raise UserError(
            f"{what} has training images of {count(len(classes), 'class')} ({names}); a classifier needs at least 2 classes: "
            "give a source with images of 2 or more classes"
        )
    has_test = source.test is not None and len(source.test) > 0
    if options.val_fraction > 0 and not has_test:
        _, val = hold_out_validation(source.train.labels, options.val_fraction, options.seed, usable)
        if not len(val):
            raise UserError(
                f"--val-fraction {options.val_fraction:g} holds out no image: every class of --source {source.location} "
                "has a single training image, which it keeps for training, and the source has no test split, so "
                "train would have nothing to judge a model on: add images to the classes"
            )


def no_validation_warning(options: BuildOptions, has_test: bool) -> str:
    why = f"--val-fraction {options.val_fraction:g}" + (
        "" if options.val_fraction == 0 else " held out no image (every class has one training image)"
    )
    if has_test:
        return f"{why}: the store has no validation split; train will not validate during training and will judge the model on the test split"
    return (
        f"{why}: the store has no validation split and the source no test split, so train will refuse it "
        "(nothing to judge a model on); build with --val-fraction above 0 to train on it"
    )


@dataclass
class Build:
    """One build-aug run, as decided before the store is touched: what is built, from what, and where."""

    options: BuildOptions
    storage: Storage
    source: Source
    policy: Policy
    chunk_rows: int
    codec: CodecSpec
    identity: BuildIdentity
    reporter: Reporter
    started: float

    @property
    def out(self) -> str:
        return self.storage.location


def build_store(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """build-aug's engine: the options checked, the source opened, then the phases of run_build under the store's
    writer lock (a second build-aug into the same store is refused instead of interleaving)."""
    reporter = reporter or Reporter()
    options.validate()
    started = time.time()
    storage = open_storage(options.out)
    options = replace(options, fit=resolved_fit(options, storage), stage_scale=resolved_stage_scale(options))
    build = prepare(options, storage, open_build_source(options, storage, reporter), reporter, started)
    made = missing_folders(storage)
    with storage.writer_lock(uuid.uuid4().hex, say=reporter.message) as still_held:
        try:
            with staging_area(storage) as scratch:
                return run_build(build, scratch, still_held)
        except BaseException:
            remove_empty_folders(
                made
            )  # stopped before the claim (a cluster refused): no folder left that the lock made
            raise


def resolved_fit(options: BuildOptions, storage: Storage) -> str | None:
    """--fit as the build uses it: as given; else, re-running or resuming without --overwrite, the fit recorded by the
    store or unfinished build at --out (stretch for one recorded before --fit existed: it is built as it was); else
    the default, crop. None without --image-size (nothing is fitted)."""
    if options.image_size is None or options.fit is not None:
        return options.fit
    recorded = None
    if not options.overwrite:
        if storage.has(BUILD_JSON):
            recorded = BuildRecord.read(storage).identity
        elif (attrs := read_raw_attrs(storage)) is not None and attrs.get("format") == FORMAT_NAME:
            recorded = attrs.get("identity")
    if isinstance(recorded, dict):
        return recorded.get("fit", FIT_BEFORE_RECORDED)
    return DEFAULT_FIT


def resolved_stage_scale(options: BuildOptions) -> float:
    """--stage-scale as the build uses it: as given, else the preset's (policies.STAGE_SCALES), else 1; 1 without
    --image-size (every image is stored at its own size: none is larger)."""
    if options.image_size is None:
        return 1.0
    if options.stage_scale is not None:
        return float(options.stage_scale)
    return STAGE_SCALES.get(options.policy, 1.0)


def open_build_source(options: BuildOptions, storage: Storage, reporter: Reporter) -> Source:
    """--source, with what the build writes inside it (--out, --preview-dir, on a re-run or resume) reported as not
    used, never read as images."""
    local_out = storage.local_path()
    excluded = {local_out: "the store this build writes (--out), not images"} if local_out is not None else {}
    if options.preview_dir is not None:
        excluded[Path(options.preview_dir)] = "the previews this build writes (--preview-dir), not images"
    source = open_source(
        options.source,
        options.image_hw,
        options.limit,
        exclude=excluded,
        label_mode=options.label_mode,
        fit=options.fit or FIT_BEFORE_RECORDED,
    )
    for note in source.ignored[:SHOWN_LINES]:  # all of them in the store's attrs, and counted at the end
        reporter.warning(f"not used: {note}")
    if source.val is not None and options.val_fraction != BuildOptions.val_fraction:
        reporter.warning(
            f"--val-fraction {options.val_fraction} is not used: the source's own validation folder is the val split ({source.layout})"
        )
    return source


def prepare(options: BuildOptions, storage: Storage, source: Source, reporter: Reporter, started: float) -> Build:
    """The policy, the chunk size and the identity; every check that needs no decoded image, before the lock."""
    policy = load_policy(options.policy, source.image_shape)
    chunk_rows = options.chunk_size or default_chunk_rows(
        source.image_shape, max_rows=len(source.train) * (options.copies + 1)
    )
    codec = choose_spec(options.codec, source.image_shape)
    if options.stage_scale > 1:
        check_staged_policy(options.policy, policy.pipeline, source.image_shape, options.stage_scale)
    identity = build_identity(options, source, policy, chunk_rows, codec)
    check_trainable(options, source)
    check_fits(options, source, chunk_rows, storage, codec)
    return Build(options, storage, source, policy, chunk_rows, codec, identity, reporter, started)


@dataclass
class Staged:
    """The source as the phase `stage` left it for the workers."""

    content_hash: str
    bad: dict[str, list[tuple[int, str]]]  # by source split, the (row, message) of each image --skip-bad left out
    skipped: list[dict]  # the same, as the store records them: file, reason


def run_build(build: Build, scratch: Path, still_held: Callable[[], None]) -> BuildResult:
    """The phases of a build, in order: connect (the Dask cluster checked, before anything is written), claim the
    store, stage the decoded source, plan the rows, lay out the skeleton, compute the chunks, finish.
    still_held(): raises when the store's writer lease was lost."""
    state = output_state(build.storage, build.identity, build.source, build.options.overwrite)
    if state == "already complete":
        return already_complete(build)
    with ExitStack() as held:
        workers = Workers(held, build.storage, build.options.workers or default_workers())
        staging = connect(build, workers, scratch)
        record = claim(build, state)
        scratch.mkdir(parents=True, exist_ok=True)
        workers.config = WorkerConfig(
            worker_location(build.storage),
            str(scratch.absolute()),
            build.policy.to_attrs(),
            build.options.seed,
            record.build_id,
            build.codec.text,
            build.options.stage_scale,
        )
        staged = stage(build, staging, record)
        splits = plan(build, staged)
        lay_out_skeleton(build, splits, staged, record.build_id)
        computed = compute(build, workers, splits, record.build_id, still_held)
    still_held()
    return finish(build, state, splits, staged, computed, record.build_id)


class Workers:
    """Where the build's tasks run: this machine's process pool, started on first use (a cluster whose workers
    decode the source needs none), or the Dask cluster of --scheduler (client, once connected)."""

    def __init__(self, held: ExitStack, storage: Storage, count: int):
        self.held, self.storage, self.count = held, storage, count
        self.config: WorkerConfig | None = None  # set once the store is claimed, before any task
        self.client = None
        self._pool = None

    def pool(self):
        if self._pool is None:
            context = pool_context(self.storage)
            self._pool = self.held.enter_context(
                context.Pool(self.count, initializer=init_worker, initargs=(self.config, client_environment()))
            )
        return self._pool

    def compute(self, tasks: list[ChunkTask]) -> Iterator[ChunkResult]:
        if self.client is not None:  # no staging folder: each worker reads the staged source from the store
            return run_chunks(self.client, self.config.on_cluster(), tasks)
        return self.pool().imap_unordered(compute_chunk, tasks)

    def decode(self, tasks: list[DecodeTask]) -> Iterator[DecodeResult]:
        """This machine's pool decodes the tasks into the staged files (the cluster's workers decode on their own)."""
        return self.pool().imap_unordered(decode_files, tasks)


def already_complete(build: Build) -> BuildResult:
    attrs = read_raw_attrs(build.storage)
    root = open_group(build.storage)
    return BuildResult(
        out=build.out, status="already complete", rows={s: root[f"{s}/{IMAGES}"].shape[0] for s in attrs["splits"]}
    )


def connect(build: Build, workers: Workers, scratch: Path) -> Staging:
    """Phase connect: with --scheduler, the cluster's client and every check of its workers, all before the claim (an
    unreachable scheduler or a refused worker leaves the store as it was). Returns where the source is staged."""
    here = LocalStaging(scratch, workers.decode)
    if not build.options.scheduler:
        return here
    if build.options.stage_scale > 1:
        raise UserError(
            f"--scheduler {build.options.scheduler}: copies cut from images staged above the stored size (--stage-scale "
            f"{build.options.stage_scale:g}, the photo presets' default) are built on this machine only: build without "
            "--scheduler, or pass --stage-scale 1 to cut copies from the stored originals"
        )
    workers.client = workers.held.enter_context(
        cluster_client(build.options.scheduler, workers.count, build.reporter.message)
    )
    return check_cluster(workers.client, build, here)


def claim(build: Build, state: str) -> BuildRecord:
    """Phase claim: a fresh or restarted build writes its build.json (the location is then known to be ours)."""
    if state in ("fresh", "restart"):
        claim_fresh(build.storage, build.identity)
    if state == "restart":
        build.reporter.message(
            f"restarting the unfinished build in {build.out} with these arguments: no chunk had been committed"
        )
    return BuildRecord.read(build.storage)


def stage(build: Build, staging: Staging, record: BuildRecord) -> Staged:
    """Phase stage: every source image decoded and staged; its content hash recorded (a resumed build's source
    must be the one it started from); with --skip-bad, what is left must still make a trainable store."""
    options, source = build.options, build.source
    content_hash, bad = stage_source(
        source, staging, fitted(options), options.skip_bad, build.reporter, options.stage_scale
    )
    if record.source_hash not in (None, content_hash):
        raise UserError(
            f"the source changed since the unfinished build in {build.out} started: "
            "pass --overwrite to start over, or restore the source to resume"
        )
    record.source_hash = content_hash
    record.write(build.storage)
    if bad.get("train"):
        usable = np.ones(len(source.train), bool)
        usable[[row for row, _ in bad["train"]]] = False
        check_trainable(options, source, usable)
    skipped = [
        {"file": shown(source.splits()[name].files[row]), "reason": message}
        for name, entries in bad.items()
        for row, message in entries
    ]
    return Staged(content_hash, bad, skipped)


def plan(build: Build, staged: Staged) -> dict[str, SplitRows]:
    """Phase plan: each split's rows (planned after decoding: with --skip-bad, the bad images' rows are left out)."""
    options, source = build.options, build.source
    return plan_rows(
        source.train.labels,
        source.test.labels if source.test is not None else None,
        options.copies,
        options.include_original,
        options.val_fraction,
        options.seed,
        skipped={name: [row for row, _ in entries] for name, entries in staged.bad.items()},
        val_labels=source.val.labels if source.val is not None else None,
    )


def lay_out_skeleton(build: Build, splits: dict[str, SplitRows], staged: Staged, build_id: str) -> None:
    """Phase skeleton: the group, its attributes and the per-row arrays, unless a resumed build laid them out already."""
    storage = build.storage
    if storage.has(SKELETON_DONE) and not skeleton_matches(storage, splits):
        if committed_chunks(storage, build_id):
            raise UserError(
                f"the unfinished build in {build.out} laid out its rows otherwise (an older augzarr started it): "
                "pass --overwrite to start over, or finish it with the version that started it"
            )
        storage.remove(SKELETON_DONE)  # nothing computed yet: lay it out again
    if not storage.has(SKELETON_DONE):
        source = build.source
        create_skeleton(
            storage,
            splits,
            source.image_shape,
            len(source.class_names),
            build.chunk_rows,
            store_attrs(build, staged, splits),
            train_file_digests=trained_file_digests(source, splits),
        )
        storage.write(SKELETON_DONE, b"done")


def compute(
    build: Build, workers: Workers, splits: dict[str, SplitRows], build_id: str, still_held: Callable[[], None]
) -> int:
    """Phase compute: every chunk without a commit marker computed and committed by the workers. Returns the rows computed."""
    skeleton = open_group(build.storage)
    # each split's own chunk rows, from its array: a split smaller than chunk_rows is one chunk of its size
    split_chunk_rows = {name: rows_per_chunk(skeleton[f"{name}/{IMAGES}"]) for name in splits}
    tasks, done_rows = pending_chunks(splits, split_chunk_rows, set(committed_chunks(build.storage, build_id)))
    total_rows = sum(len(r) for r in splits.values())
    results = workers.compute(tasks)
    with build.reporter.task(f"building {build.out}", total=total_rows) as advance:
        advance(done_rows)
        try:
            for result in results:
                still_held()  # a build whose lease was lost stops before it writes more
                advance(result.rows)
        except BadSample as exc:  # named here, where the source's file names are
            raise UserError(exc.message(build.source.sample_name(exc.split, exc.index))) from None
    return total_rows - done_rows


def finish(
    build: Build, state: str, splits: dict[str, SplitRows], staged: Staged, computed: int, build_id: str
) -> BuildResult:
    """Phase finish: the store marked complete (its checksums, then .build/ removed), and what was built."""
    storage, source = build.storage, build.source
    built = {
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - build.started, 1),
    }
    mark_complete(storage, open_group(storage, mode="r+"), list(splits), built, build_id)
    root = open_group(storage)
    return BuildResult(
        out=build.out,
        status="resumed" if state == "resume" else "built",
        rows={s: len(r) for s, r in splits.items()},
        computed_rows=computed,
        seconds=time.time() - build.started,
        bytes_on_disk=storage.usage(),
        raw_bytes=sum(root[f"{s}/{IMAGES}"].nbytes for s in splits),
        ignored=source.ignored,
        skipped=staged.skipped,
        layout=source.layout,
        warnings=[] if "val" in splits else [no_validation_warning(build.options, "test" in splits)],
    )


def missing_folders(storage: Storage) -> list[Path]:
    """The store's folder and those above it that do not exist yet, deepest first: what its writer lock will make."""
    local = storage.local_path()
    if local is None:
        return []
    local = local.absolute()
    return [folder for folder in [local, *local.parents] if not folder.exists()]


def remove_empty_folders(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty: a claimed store (a known, unfinished build) and the folders above it stay
            return


@contextmanager
def staging_area(storage: Storage):
    """Where the decoded source waits for the workers: the store's own .build/ on a local disk (a
    resumed build finds it there), a temporary folder of this machine for an object store."""
    local = storage.local_path()
    if local is not None:
        yield local / BUILD_DIR
        return
    with held_temp_folder(SOURCE_PREFIX) as folder:  # a killed build's is removed by the next build here
        yield folder


def check_cluster(client, build: Build, here: LocalStaging) -> ClusterStaging:
    """Every check of the cluster's workers, all before the store is claimed: their versions and settings, that they
    share the store, that they decode the source as this client does, and a canary chunk computed to this client's
    bytes. Returns the staging through which they get the decoded source."""
    check_versions(client)
    location = worker_location(build.storage)
    check_store_shared(client, build.storage, location)
    resize = fitted(build.options)
    first = next(iter(decode_tasks(build.source, resize, build.options.skip_bad)), None)
    staging = ClusterStaging(
        client, build.storage, location, here, first, build.source.image_shape, build.reporter.message
    )
    task = canary_task(build.source, build.chunk_rows, build.options.copies)
    config = WorkerConfig(location, "", build.policy.to_attrs(), build.options.seed, codec=build.codec.text)
    check_canary(client, config, task, canary_rows(build.source, task, resize))
    return staging


CANARY_BYTES = 1 << 22  # the canary chunk's rows travel to every worker


def canary_task(source: Source, chunk_rows: int, copies: int) -> ChunkTask:
    """A chunk task of the first training images, each as its first augmented copy (as stored, with --copies 0):
    what a worker computes for a chunk, planned without the decoded source."""
    rows = min(chunk_rows, len(source.train), max(1, CANARY_BYTES // int(np.prod(source.image_shape))))
    return ChunkTask("train", 0, 0, "train", np.arange(rows), np.full(rows, 1 if copies else 0))


def canary_rows(source: Source, task: ChunkTask, resize: str | None) -> SourceRows:
    """The source rows a chunk task reads, as this client holds them or decodes them here (a cluster's workers
    get these rows with the canary: it runs before the source is staged)."""
    split = source.splits()[task.from_split]
    needed = np.unique(task.source_index).tolist()
    if split.images is not None:
        return SourceRows({i: split.images[i] for i in needed}, len(split))
    block, _, _ = decode_block([split.files[i] for i in needed], source.image_shape, 0, resize, skip_bad=True)
    return SourceRows(dict(zip(needed, block)), len(split))


def worker_location(storage: Storage) -> str:
    """The store as a worker in another process (or on another machine) names it: a URL, or an absolute path."""
    local = storage.local_path()
    return str(local.absolute()) if local is not None else storage.location


def pool_context(storage: Storage) -> multiprocessing.context.BaseContext:
    """fork where it is safe: workers start at once with everything imported (spawned
    workers would each spend ~1 s importing albumentations). A process that has
    started TensorFlow's threads (the Keras loader) or an object-store client's must not fork;
    it uses forkserver."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and "tensorflow" not in sys.modules and storage.fork_safe:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def build_identity(
    options: BuildOptions, source: Source, policy: Policy, chunk_rows: int, codec: CodecSpec
) -> BuildIdentity:
    """Every argument that changes the store's bytes (records.py keeps its recorded form): a raw store's as format 1
    records it; a coded store's with its spec and encoder libraries (another version writes other bytes: a resume
    with it is refused as another argument is)."""
    return BuildIdentity(
        source_kind=source.kind,
        class_names=source.class_names,
        image_shape=list(source.image_shape),
        limit=options.limit,
        copies=options.copies,
        include_original=options.include_original,
        val_fraction=held_out_fraction(options, source),
        seed=options.seed,
        chunk_rows=chunk_rows,
        policy=policy.to_attrs(),
        skip_bad=options.skip_bad,
        fit=fitted(options) or FIT_BEFORE_RECORDED,
        staging=staging_record(options.stage_scale),
        license=user_text(options.license, "--license"),
        provenance=user_text(options.provenance, "--provenance"),
        **(
            {}
            if codec.is_raw
            else {
                "format_version": format_version_for(codec),
                "codec": codec.text,
                "encoder": codec_record(codec)["encoder"],
            }
        ),
    )


def staging_record(stage_scale: float) -> dict | None:
    """How copies were cut above the stored size, for the identity (the staged JPEGs' encoder decides their bytes);
    None when they are cut from the fitted originals."""
    if stage_scale <= 1:
        return None
    return {"scale": float(stage_scale), "codec": STAGE_CODEC, "encoder": encoder_versions(STAGE_SPEC.name)}


def held_out_fraction(options: BuildOptions, source: Source) -> float | None:
    """The fraction of train held out for validation; None when the source brings its own val split."""
    return None if source.val is not None else options.val_fraction


def output_state(storage: Storage, identity: BuildIdentity, source: Source, overwrite: bool) -> str:
    """Decide fresh / resume / already complete, and refuse what must not be touched; nothing written.

    Returns "fresh", "restart" (an unfinished build with other arguments that had committed no
    chunk, to start over), "resume" or "already complete". The caller claims a "fresh" or "restart"
    location (claim_fresh) once everything that can refuse before the work has been checked.
    """
    out = storage.location
    attrs = read_raw_attrs(storage)
    in_progress = storage.has(BUILD_JSON)
    is_ours = in_progress or (attrs is not None and attrs.get("format") == FORMAT_NAME)
    if not is_ours and any(key.split("/", 1)[0] not in KEEP_WHEN_CLAIMING for key in storage.list()):
        raise UserError(f"--out {out} exists and is not an augzarr store; choose another --out or remove it yourself")

    if in_progress:
        recorded = BuildRecord.read(storage)
        if identity.matches(recorded.identity) and not overwrite:
            return "resume"
        if not overwrite and not committed_chunks(storage, recorded.build_id):
            # nothing computed yet (it stopped decoding: a bad image, mixed sizes): the option the
            # error suggested just works, without --overwrite
            return "restart"
        if not overwrite:
            raise UserError(
                f"{out} holds an unfinished build with other arguments ({identity.difference(recorded.identity)}): "
                "rerun with its arguments to resume it, or pass --overwrite to start over"
            )
    elif attrs is not None and attrs.get("complete") and not overwrite:
        if not identity.matches(attrs.get("identity")):
            raise UserError(
                f"{out} is a complete store built with other arguments ({identity.difference(attrs.get('identity'))}): "
                "pass --overwrite to replace it, or choose another --out"
            )
        if source.hash_without_decoding() != attrs["source"]["content_hash"]:
            raise UserError(
                f"{out} was built from other source images: pass --overwrite to rebuild it, or choose another --out"
            )
        return "already complete"
    return "fresh"


def claim_fresh(storage: Storage, identity: BuildIdentity) -> None:
    """Claim the location first, so an interruption from here on leaves a store we know to be ours. A new
    build id: chunk tasks of an earlier build still running on a cluster check it before they commit."""
    BuildRecord.claim(identity).write(storage)
    storage.remove_all_except(KEEP_WHEN_CLAIMING)
    for key in storage.list(BUILD_DIR + "/"):
        if key != BUILD_JSON:
            storage.remove(key)


def skeleton_matches(storage: Storage, splits: dict) -> bool:
    """Whether the rows an unfinished build laid out are this plan's: a build started by a version
    that planned otherwise must not be finished with chunks of another plan."""
    attrs = read_raw_attrs(storage) or {}
    if list(attrs.get("splits", [])) != list(splits):
        return False
    root = open_group(storage)
    return all(
        np.array_equal(root[f"{name}/{array}"][:], getattr(rows, array))
        for name, rows in splits.items()
        for array in ROW_ARRAYS
    )


def fitted(options: BuildOptions) -> str | None:
    """How the workers fit each image to the stored shape (images.FITS); None: they refuse another size."""
    return None if options.image_size is None else options.fit or FIT_BEFORE_RECORDED


def stage_source(
    source: Source, staging: Staging, resize: str | None, skip_bad: bool, reporter: Reporter, stage_scale: float = 1.0
) -> tuple[str, dict]:
    """Decode every source image and stage it for the workers (LocalStaging, or cluster.ClusterStaging); with
    stage_scale above 1, also above the stored size for its copies (LocalStaging.stage_above).

    Returns the content hash and, by source split, the (row, message) of each image left out under --skip-bad.
    """
    splits = source.splits()
    if source.decoded():
        for name, split in splits.items():
            staging.save(name, split.images)
        return source.content_hash, {}
    for name, split in splits.items():
        staging.allocate(name, (len(split), *source.image_shape))
    above = {name: staging.stage_above(name, len(split)) for name, split in splits.items()} if stage_scale > 1 else {}
    digests = {name: [""] * len(split) for name, split in splits.items()}
    bad: dict[str, list[tuple[int, str]]] = {}
    with reporter.task("decoding source", total=sum(len(s) for s in splits.values())) as advance:
        for result in staging.decode(decode_tasks(source, resize, skip_bad, stage_scale)):
            digests[result.split][result.start : result.start + len(result.digests)] = result.digests
            if result.staged is not None:
                above[result.split].add(result.start, result.staged)
            if result.bad:
                bad.setdefault(result.split, []).extend(result.bad)
            advance(len(result.digests))
    for writer in above.values():
        writer.close()
    for entries in bad.values():
        entries.sort()
    if len(bad.get("train", [])) == len(source.train):
        raise UserError(
            f"--source {source.location}: none of its {len(source.train)} training images could be used (--skip-bad skipped them all)"
        )
    source.content_hash = source.hash_digests(digests)
    source.file_digests = digests
    return source.content_hash, bad


def decode_tasks(source: Source, resize: str | None, skip_bad: bool, stage_scale: float = 1.0) -> list[DecodeTask]:
    """The decode tasks of a source of encoded images, STAGE_ROWS images each."""
    return [
        DecodeTask(name, start, split.files[start : start + STAGE_ROWS], resize, skip_bad, stage_scale)
        for name, split in source.splits().items()
        if split.files is not None
        for start in range(0, len(split), STAGE_ROWS)
    ]


def pending_chunks(
    splits: dict[str, SplitRows], chunk_rows_of: dict[str, int], committed: set[tuple[str, int]]
) -> tuple[list[ChunkTask], int]:
    """The chunk tasks without a commit marker, and the rows of those with one."""
    tasks, done_rows = [], 0
    for name, rows in splits.items():
        chunk_rows = chunk_rows_of[name]
        for chunk, start in enumerate(range(0, len(rows), chunk_rows)):
            stop = min(start + chunk_rows, len(rows))
            if (name, chunk) in committed:
                done_rows += stop - start
            else:
                tasks.append(
                    ChunkTask(
                        name, chunk, start, rows.from_split, rows.source_index[start:stop], rows.copy_index[start:stop]
                    )
                )
    return tasks, done_rows


def trained_file_digests(source: Source, splits: dict) -> str | None:
    """The digest set of the source files whose images are in train/ (evaluate --source counts its images among
    them); None for a source of arrays, which has no files."""
    from augzarr.store_format import digest_set

    digests = (source.file_digests or {}).get("train")
    if digests is None or "train" not in splits:
        return None
    return digest_set(digests[row] for row in np.unique(splits["train"].source_index))


def store_attrs(build: Build, staged: Staged, splits: dict[str, SplitRows]) -> StoreAttrs:
    options, source = build.options, build.source
    return StoreAttrs(
        splits=list(splits),
        class_names=source.class_names,
        image_shape=list(source.image_shape),
        copies=options.copies,
        include_original=options.include_original,
        val_fraction=held_out_fraction(options, source),
        seed=options.seed,
        chunk_rows=build.chunk_rows,
        policy=build.policy.to_attrs(),
        source=SourceInfo(
            kind=source.kind,
            location=source.location,
            train_count=len(source.train),
            test_count=len(source.test) if source.test is not None else 0,
            val_count=len(source.val) if source.val is not None else 0,
            layout=source.layout,
            limit=options.limit,
            content_hash=staged.content_hash,
            ignored=source.ignored,
        ),
        identity=build.identity.to_json(),
        versions=package_versions(),
        format_version=format_version_for(build.codec),
        codec=codec_record(build.codec),
        skipped=staged.skipped,
        license=user_text(options.license, "--license"),
        provenance=user_text(options.provenance, "--provenance"),
    )


def package_versions() -> dict:
    versions = {"augzarr": __version__}
    for package in ("albumentations", "numpy", "zarr", "opencv-python-headless", "numcodecs"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
