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
import json
import multiprocessing
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from augzarr import __version__
from augzarr.errors import OptionError, UserError
from augzarr.storage import Storage, open_storage
from augzarr.store_format import (
    BUILD_DIR, BUILD_JSON, FORMAT_NAME, FORMAT_VERSION, IMAGE_CODEC, IMAGES, KEEP_WHEN_CLAIMING, ROW_ARRAYS, SKELETON_DONE,
    SourceInfo, StoreAttrs, committed_chunks, create_skeleton, default_chunk_rows, mark_complete, open_group, read_raw_attrs,
)
from augzarr.user_text import user_text
from augzarr.wording import SHOWN_LINES, count

from .decode import shown
from .layout import hold_out_validation, plan_rows
from .options import BuildOptions, default_workers
from .policies import Policy, load_policy
from .policy_check import BadSample
from .progress import Reporter
from .sources import Source, folder_content_hash, hash_folder_files, open_source, source_splits
from .cluster import ClusterStaging, check_canary, check_store_shared, check_versions, cluster_client, run_chunks
from .staging import STAGE_ROWS, held_temp_folder
from .worker import SourceRows, compute_chunk, decode_block, decode_files, init_worker, map_source, source_file

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


def check_fits(options: BuildOptions, source: Source, chunk_rows: int, storage: Storage) -> None:
    """Refuse, before any work, a chunk too big for memory or a store too big for the disk
    (object storage has no free space to ask about)."""
    row_bytes = int(np.prod(source.image_shape))
    if chunk_rows * row_bytes > MAX_CHUNK_BYTES:
        raise OptionError(f"--chunk-size {chunk_rows} makes {chunk_rows * row_bytes / 2**20:,.0f} MiB chunks; use at most "
                        f"{count(MAX_CHUNK_BYTES // row_bytes, 'row')} of {'x'.join(map(str, source.image_shape))} images")
    rows = len(source.train) * (options.copies + 1) + sum(len(s) for name, s in source_splits(source).items() if name != "train")
    needed = rows * row_bytes
    free = storage.free_bytes() if storage.checks_free_space else None
    if free is not None and needed > free:
        raise UserError(f"the store needs about {needed / 2**30:,.1f} GiB but {free / 2**30:,.1f} GiB are free for --out {storage.location}: "
                        "free some space, choose another --out, or use fewer --copies")


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
        raise UserError(f"{what} has training images of {count(len(classes), 'class')} ({names}); a classifier needs at least 2 classes: "
                        "give a source with images of 2 or more classes")
    has_test = source.test is not None and len(source.test) > 0
    if options.val_fraction > 0 and not has_test:
        _, val = hold_out_validation(source.train.labels, options.val_fraction, options.seed, usable)
        if not len(val):
            raise UserError(f"--val-fraction {options.val_fraction:g} holds out no image: every class of --source {source.location} "
                            "has a single training image, which it keeps for training, and the source has no test split, so "
                            "train would have nothing to judge a model on: add images to the classes")


def no_validation_warning(options: BuildOptions, has_test: bool) -> str:
    why = f"--val-fraction {options.val_fraction:g}" + ("" if options.val_fraction == 0 else " held out no image (every class has one training image)")
    if has_test:
        return f"{why}: the store has no validation split; train will not validate during training and will judge the model on the test split"
    return (f"{why}: the store has no validation split and the source no test split, so train will refuse it "
            "(nothing to judge a model on); build with --val-fraction above 0 to train on it")


def build_store(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    reporter = reporter or Reporter()
    options.validate()
    started = time.time()
    storage = open_storage(options.out)
    # --out or --preview-dir inside an image folder (re-run, or resumed) is reported as not used, never read as a class
    local_out = storage.local_path()
    excluded = {local_out: "the store this build writes (--out), not images"} if local_out is not None else {}
    if options.preview_dir is not None:
        excluded[Path(options.preview_dir)] = "the previews this build writes (--preview-dir), not images"
    source = open_source(options.source, options.image_size, options.limit, exclude=excluded, label_mode=options.label_mode)
    for note in source.ignored[:SHOWN_LINES]:  # all of them in the store's attrs, and counted at the end
        reporter.warning(f"not used: {note}")
    if source.val is not None and options.val_fraction != BuildOptions.val_fraction:
        reporter.warning(f"--val-fraction {options.val_fraction} is not used: the source's own validation folder is the val split ({source.layout})")
    policy = load_policy(options.policy, source.image_shape)
    chunk_rows = options.chunk_size or default_chunk_rows(source.image_shape, max_rows=len(source.train) * (options.copies + 1))
    identity = build_identity(options, source, policy, chunk_rows)
    check_trainable(options, source)
    check_fits(options, source, chunk_rows, storage)

    # one writer at a time: a second build-aug into the same store refuses instead of interleaving
    made = missing_folders(storage)
    with storage.writer_lock(uuid.uuid4().hex, say=reporter.message) as still_held:
        try:
            with staging_area(storage) as scratch:
                return run_build(options, storage, scratch, still_held, source, policy, chunk_rows, identity, started, reporter)
        except BaseException:
            remove_empty_folders(made)  # stopped before the claim (a cluster refused): no folder left that the lock made
            raise


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


def run_build(options, storage: Storage, scratch: Path, still_held, source, policy, chunk_rows, identity, started, reporter) -> BuildResult:
    out = storage.location
    resume = output_state(storage, identity, source, options.overwrite)
    if resume == "already complete":
        attrs = read_raw_attrs(storage)
        root = open_group(storage)
        return BuildResult(out=out, status="already complete", rows={s: root[f"{s}/{IMAGES}"].shape[0] for s in attrs["splits"]})

    workers = options.workers or default_workers()
    with ExitStack() as held:
        pools = []

        def pool():  # started on first use (config is set by then): a cluster whose workers decode the source needs none
            if not pools:
                pools.append(held.enter_context(pool_context(storage).Pool(workers, initializer=init_worker, initargs=config)))
            return pools[0]

        staging = LocalStaging(scratch, pool)
        client = None
        if options.scheduler:
            # every check of the cluster before the claim: an unreachable scheduler or a refused worker leaves the store as it was
            client = held.enter_context(cluster_client(options.scheduler, workers, reporter.message))
            staging = check_cluster(client, storage, staging, source, policy, chunk_rows, options, reporter)
        if resume in ("fresh", "restart"):
            claim_fresh(storage, identity)
        if resume == "restart":
            reporter.message(f"restarting the unfinished build in {out} with these arguments: no chunk had been committed")
        scratch.mkdir(parents=True, exist_ok=True)
        build_id = storage.read_json(BUILD_JSON).get("build_id", "")  # "": claimed before build ids existed
        config = (worker_location(storage), str(scratch.absolute()), policy.to_attrs(), options.seed, build_id)
        content_hash, bad = stage_source(source, staging, options.image_size is not None, options.skip_bad, reporter)
        recorded = storage.read_json(BUILD_JSON)
        if recorded.get("source_hash") not in (None, content_hash):
            raise UserError(
                f"the source changed since the unfinished build in {out} started: "
                "pass --overwrite to start over, or restore the source to resume"
            )
        storage.write_json(BUILD_JSON, {**recorded, "source_hash": content_hash})
        if bad.get("train"):
            usable = np.ones(len(source.train), bool)
            usable[[row for row, _ in bad["train"]]] = False
            check_trainable(options, source, usable)
        # planned after decoding: with --skip-bad, the bad files' rows are left out
        splits = plan_rows(
            source.train.labels,
            source.test.labels if source.test is not None else None,
            options.copies, options.include_original, options.val_fraction, options.seed,
            skipped={name: [row for row, _ in entries] for name, entries in bad.items()},
            val_labels=source.val.labels if source.val is not None else None,
        )
        skipped = [{"file": shown(files_of(source, name)[row]), "reason": message} for name, entries in bad.items() for row, message in entries]
        if storage.has(SKELETON_DONE) and not skeleton_matches(storage, splits):
            if committed_chunks(storage, build_id):
                raise UserError(f"the unfinished build in {out} laid out its rows otherwise (an older augzarr started it): "
                                "pass --overwrite to start over, or finish it with the version that started it")
            storage.remove(SKELETON_DONE)  # nothing computed yet: lay it out again
        if not storage.has(SKELETON_DONE):
            attrs = store_attrs(options, source, content_hash, policy, chunk_rows, splits, identity, skipped)
            create_skeleton(storage, splits, source.image_shape, len(source.class_names), chunk_rows, attrs,
                            train_file_digests=trained_file_digests(source, splits))
            storage.write(SKELETON_DONE, b"done")
        # each split's own chunk rows, from its array: a split smaller than chunk_rows is one chunk of its size
        skeleton = open_group(storage)
        rows_per_chunk = {name: skeleton[f"{name}/{IMAGES}"].chunks[0] for name in splits}
        tasks, done_rows = pending_chunks(splits, rows_per_chunk, set(committed_chunks(storage, build_id)))
        total_rows = sum(len(r) for r in splits.values())
        if client is not None:  # no staging folder: each worker reads the staged source from the store
            results = run_chunks(client, (config[0], "", *config[2:]), tasks)
        else:
            results = pool().imap_unordered(compute_chunk, tasks)
        with reporter.task(f"building {out}", total=total_rows) as advance:
            advance(done_rows)
            try:
                for _, _, n in results:
                    still_held()  # a build whose lease was lost stops before it writes more
                    advance(n)
            except BadSample as exc:  # named here, where the source's file names are
                raise UserError(exc.message(sample_name(source, exc.split, exc.index))) from None
    still_held()
    built = {"finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": round(time.time() - started, 1)}
    mark_complete(storage, open_group(storage, mode="r+"), list(splits), built, build_id)
    root = open_group(storage)
    return BuildResult(
        out=out,
        status="resumed" if resume == "resume" else "built",
        rows={s: len(r) for s, r in splits.items()},
        computed_rows=total_rows - done_rows,
        seconds=time.time() - started,
        bytes_on_disk=storage.usage(),
        raw_bytes=sum(root[f"{s}/{IMAGES}"].nbytes for s in splits),
        ignored=source.ignored,
        skipped=skipped,
        layout=source.layout,
        warnings=[] if "val" in splits else [no_validation_warning(options, "test" in splits)],
    )


def check_cluster(client, storage: Storage, here: "LocalStaging", source: Source, policy: Policy, chunk_rows: int, options: BuildOptions,
                  reporter: Reporter) -> ClusterStaging:
    """Every check of the cluster's workers, all before the store is claimed: their versions and settings, that they
    share the store, that they decode the source as this client does, and a canary chunk computed to this client's
    bytes. Returns the staging through which they get the decoded source."""
    check_versions(client)
    location = worker_location(storage)
    check_store_shared(client, storage, location)
    resize = options.image_size is not None
    first = next(iter(decode_tasks(source, resize, options.skip_bad)), None)
    staging = ClusterStaging(client, storage, location, here, first, source.image_shape, reporter.message)
    task = canary_task(source, chunk_rows, options.copies)
    check_canary(client, (location, "", policy.to_attrs(), options.seed), task, canary_rows(source, task, resize))
    return staging


CANARY_BYTES = 1 << 22  # the canary chunk's rows travel to every worker


def canary_task(source: Source, chunk_rows: int, copies: int) -> tuple:
    """A chunk task of the first training images, each as its first augmented copy (as stored, with --copies 0):
    what a worker computes for a chunk, planned without the decoded source."""
    rows = min(chunk_rows, len(source.train), max(1, CANARY_BYTES // int(np.prod(source.image_shape))))
    return ("train", 0, 0, "train", np.arange(rows), np.full(rows, 1 if copies else 0))


def canary_rows(source: Source, task: tuple, resize: bool) -> SourceRows:
    """The source rows a chunk task reads, as this client holds them or decodes them here (a cluster's workers
    get these rows with the canary: it runs before the source is staged)."""
    split = source_splits(source)[task[3]]
    needed = np.unique(task[4]).tolist()
    if split.images is not None:
        return SourceRows({i: split.images[i] for i in needed}, len(split))
    block, _, _ = decode_block([str(split.files[i]) for i in needed], source.image_shape, 0, resize, skip_bad=True)
    return SourceRows(dict(zip(needed, block)), len(split))


def files_of(source: Source, split: str) -> list[Path]:
    return source_splits(source)[split].files


def sample_name(source: Source, split: str, index: int) -> str:
    """A source image in a message: its file where it has one, else its split and index."""
    files = files_of(source, split)
    if files is not None and index < len(files):
        return f"source image {shown(files[index])}"
    return f"source {split} image {index}"


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


def build_identity(options: BuildOptions, source: Source, policy: Policy, chunk_rows: int) -> dict:
    """Every argument that changes the store's bytes; a resumed build must match it exactly."""
    return {
        "format_version": FORMAT_VERSION,
        "source_kind": source.kind,
        "class_names": source.class_names,
        "image_shape": list(source.image_shape),
        "limit": options.limit,
        "copies": options.copies,
        "include_original": options.include_original,
        "val_fraction": held_out_fraction(options, source),
        "seed": options.seed,
        "chunk_rows": chunk_rows,
        "policy": json.loads(json.dumps(policy.to_attrs())),
        "codec": IMAGE_CODEC,
        **({"skip_bad": True} if options.skip_bad else {}),
        # recorded in the attributes, so part of the store: another text needs --overwrite, never a silent "nothing to do"
        **{name: text for name in ("license", "provenance") if (text := user_text(getattr(options, name), f"--{name}"))},
    }


def held_out_fraction(options: BuildOptions, source: Source) -> float | None:
    """The fraction of train held out for validation; None when the source brings its own val split."""
    return None if source.val is not None else options.val_fraction


IDENTITY_DEFAULTS = {"skip_bad": False, "license": None, "provenance": None}  # keys an identity leaves out at their default
MAX_DIFFERENCES = 4


def describe_difference(recorded: dict, identity: dict) -> str:
    """The arguments that differ, by name: inside a nested value (the policy's serialized form), the
    path to each field that differs, so one name on both sides never hides what changed."""
    found = differences({**IDENTITY_DEFAULTS, **recorded}, {**IDENTITY_DEFAULTS, **identity}, [])
    found.sort(key=lambda difference: difference[0].count("."))  # whole arguments first, then fields inside one
    shown = [f"{path} {short(old)} -> {short(new)}" for path, old, new in found[:MAX_DIFFERENCES]]
    more = f"; and {len(found) - MAX_DIFFERENCES} more" if len(found) > MAX_DIFFERENCES else ""
    return "; ".join(shown) + more if shown else "unknown difference"


MISSING = object()


def differences(old, new, path: list[str]) -> list[tuple[str, object, object]]:
    """(path, old, new) of every leaf that differs; a key one side lacks is MISSING there."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict) and old.get("name") == new.get("name"):  # another name says it all
        return [found for key in sorted(set(old) | set(new), key=str)
                for found in differences(old.get(key, MISSING), new.get(key, MISSING), [*path, str(key)])]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and all(isinstance(x, dict) for x in old + new):
        return [found for i, (a, b) in enumerate(zip(old, new)) for found in differences(a, b, [*path, item_name(a, b, i)])]
    # a policy's path reads policy.PadIfNeeded.min_height, not policy.albumentations.transform.transforms.0.min_height
    shown = [p for p in path if p not in ("albumentations", "transform", "transforms")]
    return [(".".join(shown), old, new)]


def item_name(a, b, index: int) -> str:
    """A list item by its albumentations class when both sides have the same one, else by position."""
    names = {x.get("__class_fullname__") for x in (a, b) if isinstance(x, dict)}
    return names.pop() if len(names) == 1 and None not in names else str(index)


def short(value) -> str:
    if value is MISSING:
        return "(none)"
    if isinstance(value, list) and value and all(isinstance(x, dict) and "__class_fullname__" in x for x in value):
        value = [x["__class_fullname__"] for x in value]  # a list of transforms, by class
    text = json.dumps(value.get("name") if isinstance(value, dict) and "name" in value else value)
    return text if len(text) <= 40 else text[:37] + "..."


def output_state(storage: Storage, identity: dict, source: Source, overwrite: bool) -> str:
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
        recorded = storage.read_json(BUILD_JSON)
        if recorded["identity"] == identity and not overwrite:
            return "resume"
        if not overwrite and not committed_chunks(storage, recorded.get("build_id", "")):
            # nothing computed yet (it stopped decoding: a bad image, mixed sizes): the option the
            # error suggested just works, without --overwrite
            return "restart"
        if not overwrite:
            raise UserError(
                f"{out} holds an unfinished build with other arguments ({describe_difference(recorded['identity'], identity)}): "
                "rerun with its arguments to resume it, or pass --overwrite to start over"
            )
    elif attrs is not None and attrs.get("complete") and not overwrite:
        if attrs.get("identity") != identity:
            raise UserError(
                f"{out} is a complete store built with other arguments ({describe_difference(attrs.get('identity', {}), identity)}): "
                "pass --overwrite to replace it, or choose another --out"
            )
        if (source.content_hash or hash_folder_files(source)) != attrs["source"]["content_hash"]:
            raise UserError(f"{out} was built from other source images: pass --overwrite to rebuild it, or choose another --out")
        return "already complete"
    return "fresh"


def claim_fresh(storage: Storage, identity: dict) -> None:
    """Claim the location first, so an interruption from here on leaves a store we know to be ours. A new
    build id: chunk tasks of an earlier build still running on a cluster check it before they commit."""
    storage.write_json(BUILD_JSON, {"identity": identity, "source_hash": None, "build_id": uuid.uuid4().hex})
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
    return all(np.array_equal(root[f"{name}/{array}"][:], getattr(rows, array))
               for name, rows in splits.items() for array in ROW_ARRAYS)


class LocalStaging:
    """The decoded source in <scratch>/source-<split>.npy, decoded by this machine's worker pool."""

    def __init__(self, scratch: Path, pool):
        self.scratch, self.pool = scratch, pool

    def save(self, split: str, images: np.ndarray) -> None:
        np.save(source_file(self.scratch, split), images)  # a plain write: no page fault per page of a mapping

    def allocate(self, split: str, shape: tuple[int, ...]) -> None:
        np.lib.format.open_memmap(source_file(self.scratch, split), mode="w+", dtype=np.uint8, shape=shape)

    def decode(self, tasks: list[tuple]):
        return self.pool().imap_unordered(decode_files, tasks)

    def array(self, split: str) -> np.ndarray:
        return map_source(self.scratch, split, "r")


def stage_source(source: Source, staging, resize: bool, skip_bad: bool, reporter: Reporter) -> tuple[str, dict]:
    """Decode every source image and stage it for the workers (LocalStaging, or cluster.ClusterStaging).

    Returns the content hash and, by source split, the (row, message) of each file left out under --skip-bad.
    """
    splits = source_splits(source)
    if source.train.images is not None:
        for name, split in splits.items():
            staging.save(name, split.images)
        return source.content_hash, {}
    for name, split in splits.items():
        staging.allocate(name, (len(split), *source.image_shape))
    tasks = decode_tasks(source, resize, skip_bad)
    digests = {name: [""] * len(split) for name, split in splits.items()}
    bad: dict[str, list[tuple[int, str]]] = {}
    with reporter.task("decoding source", total=sum(len(s) for s in splits.values())) as advance:
        for name, start, batch, batch_bad in staging.decode(tasks):
            digests[name][start : start + len(batch)] = batch
            if batch_bad:
                bad.setdefault(name, []).extend(batch_bad)
            advance(len(batch))
    for entries in bad.values():
        entries.sort()
    if len(bad.get("train", [])) == len(source.train):
        raise UserError(f"--source {source.location}: none of its {len(source.train)} training images could be used (--skip-bad skipped them all)")
    source.content_hash = folder_content_hash(source, digests)
    source.file_digests = digests
    return source.content_hash, bad


def decode_tasks(source: Source, resize: bool, skip_bad: bool) -> list[tuple]:
    """The decode tasks of a source of image files: (split, start, files, resize, skip_bad), STAGE_ROWS files each."""
    return [(name, start, [str(f) for f in split.files[start : start + STAGE_ROWS]], resize, skip_bad)
            for name, split in source_splits(source).items() if split.files is not None for start in range(0, len(split), STAGE_ROWS)]


def pending_chunks(splits: dict, rows_per_chunk: dict[str, int], committed: set[tuple[str, int]]) -> tuple[list[tuple], int]:
    tasks, done_rows = [], 0
    for name, rows in splits.items():
        chunk_rows = rows_per_chunk[name]
        for chunk, start in enumerate(range(0, len(rows), chunk_rows)):
            stop = min(start + chunk_rows, len(rows))
            if (name, chunk) in committed:
                done_rows += stop - start
            else:
                tasks.append((name, chunk, start, rows.from_split, rows.source_index[start:stop], rows.copy_index[start:stop]))
    return tasks, done_rows


def trained_file_digests(source: Source, splits: dict) -> str | None:
    """The digest set of the source files whose images are in train/ (evaluate --source counts its images among
    them); None for a source of arrays, which has no files."""
    from augzarr.store_format import digest_set

    digests = (source.file_digests or {}).get("train")
    if digests is None or "train" not in splits:
        return None
    return digest_set(digests[row] for row in np.unique(splits["train"].source_index))


def store_attrs(options, source: Source, content_hash: str, policy: Policy, chunk_rows: int, splits: dict, identity: dict,
                skipped: list[dict]) -> StoreAttrs:
    return StoreAttrs(
        splits=list(splits),
        class_names=source.class_names,
        image_shape=list(source.image_shape),
        copies=options.copies,
        include_original=options.include_original,
        val_fraction=held_out_fraction(options, source),
        seed=options.seed,
        chunk_rows=chunk_rows,
        policy=policy.to_attrs(),
        source=SourceInfo(
            kind=source.kind,
            location=source.location,
            train_count=len(source.train),
            test_count=len(source.test) if source.test is not None else 0,
            val_count=len(source.val) if source.val is not None else 0,
            layout=source.layout,
            limit=options.limit,
            content_hash=content_hash,
            ignored=source.ignored,
        ),
        identity=identity,
        versions=package_versions(),
        skipped=skipped,
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
