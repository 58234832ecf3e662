"""A run folder's two records, typed, each read and written here only.

  run.json             RunRecord: what the run is (its options, its store, its model, its devices) and whether it
                       is finished: status "running" from when train claims the folder, "complete" written last
  state/progress.json  Progress: the last checkpoint (the epochs finished, the batches of the next one trained when
                       it lies inside an epoch: train --checkpoint-every), its file name, the random state it
                       resumes with, and the history so far

Both are written whole (write_atomic): a kill leaves the old record or the new, never half of one. Reading is
lenient with the records of earlier augzarr: a field a run recorded before it existed takes the value that run had
(RunRecord.from_json says which for each); a file that is not a JSON object reads as None (run.json) or as no epoch
finished (progress.json). No Keras here: the CLI and bench/compare_recipes.py read records without loading it.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from augzarr.storage.local import write_atomic

from .options import DEFAULT_ALPHA, TrainOptions

if TYPE_CHECKING:
    from augzarr.store_format import StoreAttrs

RUN_JSON = "run.json"
STATE_DIR = "state"
PROGRESS_JSON = "progress.json"
RUNNING, COMPLETE = "running", "complete"
BUILT_IN = "built-in"  # ModelInfo.kind of deep and shallow; own_model.py's are "python" and "keras"

# An option a run recorded before it existed ran with that option's default of the time, where that is not today's:
# --lr-schedule came in as "constant" and became "cosine" later
DEFAULTS_BEFORE_RECORDED = {"lr_schedule": "constant"}


def now_utc() -> str:
    """An ISO time to the microsecond: runs started within one second still order by it."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def read_json_object(path: Path) -> dict | None:
    """A JSON object from a file; None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def without_none(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class StoreFingerprint:
    """What a resumed run checks: the same store contents (its build arguments, its source images' content hash, its
    chunks' CRC-32s), not merely the same path."""

    identity: dict | None = None
    content_hash: str | None = None
    chunk_crc32: dict | None = None

    @classmethod
    def of(cls, attrs: StoreAttrs) -> StoreFingerprint:
        return cls(attrs.identity, attrs.source.content_hash, attrs.chunk_crc32)

    @classmethod
    def from_json(cls, raw) -> StoreFingerprint | None:
        return cls(**{f.name: raw.get(f.name) for f in fields(cls)}) if isinstance(raw, dict) else None

    def to_json(self) -> dict:
        return asdict(self)

    def same_build(self, other: StoreFingerprint) -> bool:
        """The same build arguments from the same images (the chunks' CRC-32s not compared)."""
        return (self.identity, self.content_hash) == (other.identity, other.content_hash)


@dataclass(frozen=True)
class StoreSource:
    """Where the store's images came from: evaluate --source recognises that folder (by path or by content hash) and
    warns that a score on it is not a held-out score."""

    kind: str | None = None
    location: str | None = None
    content_hash: str | None = None
    limit: int | None = None

    @classmethod
    def of(cls, attrs: StoreAttrs) -> StoreSource:
        source = attrs.source
        return cls(source.kind, source.location, source.content_hash, source.limit)

    @classmethod
    def from_json(cls, raw) -> StoreSource | None:
        return cls(**{f.name: raw.get(f.name) for f in fields(cls)}) if isinstance(raw, dict) else None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelInfo:
    """Which model a run trained: a built-in name, or the user's own (own_model.py) with its file and sha256; for a
    keras.applications model started from pretrained weights (train --weights), the weights file it loaded, its sha256,
    where Keras publishes it (imagenet) and whether it is that very file. Recorded without the fields that do not
    apply (None)."""

    spec: str  # --model as given
    kind: str = BUILT_IN  # or "python" (PATH.py:FUNCTION), "keras" (PATH.keras)
    file: str | None = None  # an own model's file, its absolute path
    sha256: str | None = None
    function: str | None = None  # kind "python": the function that builds it
    came_compiled: bool | None = None  # kind "python": whether the function returned it compiled
    name: str | None = None  # the Keras model's name
    parameters: int | None = None
    weights_file: str | None = None  # --weights imagenet or PATH: the file loaded, its absolute path
    weights_sha256: str | None = None
    weights_url: str | None = None  # imagenet: where Keras publishes the file
    weights_downloaded: bool | None = None  # imagenet: fetched into Keras' cache by this run
    weights_published: bool | None = None  # the very file Keras publishes (its md5 is Keras' own)

    @classmethod
    def from_json(cls, raw) -> ModelInfo | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("spec"), str):
            return None
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})

    def to_json(self) -> dict:
        return without_none(asdict(self))

    @property
    def is_own(self) -> bool:
        return self.kind != BUILT_IN


@dataclass(frozen=True)
class DevicesUsed:
    """The devices a run trained on. With distributed, those each global batch was split over; without, the one device
    --distribute found; none: without --distribute (Keras' default device)."""

    names: tuple[str, ...] = ()
    distributed: bool = False

    @property
    def count(self) -> int:
        return max(1, len(self.names))


@dataclass
class RunRecord:
    """run.json. A run claims its folder with the fields known before the model is built (options, store), then
    records the rest once it is; complete: every output written, evaluated_on and finished_utc set."""

    status: str | None  # RUNNING or COMPLETE (None: a record that says neither)
    run_dir: str | None
    options: TrainOptions | None  # as they run (normalised); None: a record whose options train cannot read
    store_fingerprint: StoreFingerprint | None = None
    store_source: StoreSource | None = None
    updated_utc: str | None = None  # when the run last started or finished an epoch
    backend: str | None = None
    versions: dict = field(default_factory=dict)
    model: ModelInfo | None = None
    learning_rate: float | None = None  # the start of the schedule
    fine_tune_learning_rate: float | None = None  # after --freeze-epochs: the start of the fine-tuning schedule
    mix_alpha: float | None = None  # the alpha used, its default when --mix-alpha was not given
    devices: DevicesUsed = DevicesUsed()
    train_rows: int | None = None
    class_names: list[str] | None = None
    image_shape: list[int] | None = None
    intended_use: str | None = None  # train --intended-use, for the model card; None: not stated
    evaluated_on: str | None = None  # "test" or "val", once complete
    finished_utc: str | None = None

    @property
    def is_running(self) -> bool:
        return self.status == RUNNING

    @property
    def is_complete(self) -> bool:
        return self.status == COMPLETE

    @classmethod
    def read(cls, run_dir: Path) -> RunRecord | None:
        """run_dir's run.json; None when there is none or it is not a JSON object."""
        raw = read_json_object(run_dir / RUN_JSON)
        return None if raw is None else cls.from_json(raw)

    def write(self, run_dir: Path) -> None:
        write_atomic(run_dir / RUN_JSON, json.dumps(self.to_json(), indent=2))

    def touched(self) -> RunRecord:
        """The record, saying the run is alive now: train --resume picks the latest such run."""
        return replace(self, updated_utc=now_utc())

    def last_activity(self, run_dir: Path) -> str:
        """When the run last started or finished an epoch; for a run recorded before updated_utc existed, when its
        run.json was last written."""
        if self.updated_utc:
            return self.updated_utc
        mtime = datetime.datetime.fromtimestamp((run_dir / RUN_JSON).stat().st_mtime, datetime.UTC)
        return mtime.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @property
    def source_for_evaluate(self) -> StoreSource:
        """store_source; for a run recorded before it existed, what its fingerprint knows (the content hash)."""
        if self.store_source is not None:
            return self.store_source
        return StoreSource(content_hash=self.store_fingerprint.content_hash if self.store_fingerprint else None)

    @classmethod
    def from_json(cls, raw: dict) -> RunRecord:
        """A run.json of any augzarr. What earlier runs lack: store_source (evaluate falls back on the fingerprint's
        content hash), model (deep or shallow, --model's then only values), mix_alpha (the mix's default), distributed
        (devices were listed only when it was), updated_utc (run.json's time), intended_use (not stated), options added
        since (DEFAULTS_BEFORE_RECORDED, else today's default)."""
        options = recorded_options(raw.get("options"))
        devices = raw.get("devices") if isinstance(raw.get("devices"), list) else []
        model = ModelInfo.from_json(raw.get("model"))
        if model is None and options is not None:
            model = ModelInfo(options.model, BUILT_IN, parameters=raw.get("parameters"))
        return cls(
            status=raw.get("status"),
            run_dir=raw.get("run_dir"),
            options=options,
            store_fingerprint=StoreFingerprint.from_json(raw.get("store_fingerprint")),
            store_source=StoreSource.from_json(raw.get("store_source")),
            updated_utc=raw.get("updated_utc"),
            backend=raw.get("backend"),
            versions=raw.get("versions") if isinstance(raw.get("versions"), dict) else {},
            model=model,
            learning_rate=raw.get("learning_rate"),
            fine_tune_learning_rate=raw.get("fine_tune_learning_rate"),
            mix_alpha=raw["mix_alpha"] if "mix_alpha" in raw else default_alpha(options),
            devices=DevicesUsed(tuple(devices), bool(raw.get("distributed", bool(devices)))),
            train_rows=raw.get("train_rows"),
            class_names=raw.get("class_names"),
            image_shape=raw.get("image_shape"),
            intended_use=raw.get("intended_use"),
            evaluated_on=raw.get("evaluated_on"),
            finished_utc=raw.get("finished_utc"),
        )

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "run_dir": self.run_dir,
            "options": asdict(self.options) if self.options is not None else None,
            "store_fingerprint": self.store_fingerprint.to_json() if self.store_fingerprint else None,
            "store_source": self.store_source.to_json() if self.store_source else None,
            "updated_utc": self.updated_utc,
            "backend": self.backend,
            "versions": self.versions,
            "parameters": self.model.parameters if self.model else None,
            "model": self.model.to_json() if self.model else None,
            "learning_rate": self.learning_rate,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
            "mix_alpha": self.mix_alpha,
            "devices": list(self.devices.names) or None,
            "device_count": self.devices.count,
            "distributed": self.devices.distributed,
            "train_rows": self.train_rows,
            "class_names": self.class_names,
            "image_shape": self.image_shape,
            "intended_use": self.intended_use,
            "evaluated_on": self.evaluated_on,
            "finished_utc": self.finished_utc,
        }


def default_alpha(options: TrainOptions | None) -> float | None:
    """The alpha a run's --mix had by default; None without --mix (or without readable options)."""
    if options is None or not options.mix:
        return None
    return options.mix_alpha if options.mix_alpha is not None else DEFAULT_ALPHA.get(options.mix)


def recorded_options(raw) -> TrainOptions | None:
    """The options a run recorded, as they ran: normalised (a run recorded before normalising had --online as typed), an
    option recorded before it existed at the value the run had; None for anything that is not a run's options."""
    if not isinstance(raw, dict):
        return None
    known = {f.name for f in fields(TrainOptions)}
    recorded = {**asdict(TrainOptions()), **DEFAULTS_BEFORE_RECORDED, **{k: v for k, v in raw.items() if k in known}}
    try:
        return TrainOptions(**recorded).normalised()
    except (TypeError, ValueError, AttributeError):
        return None


def checkpoint_name(epochs_done: int, batches_done: int = 0) -> str:
    """The file in state/ of a checkpoint: after an epoch, or after a batch inside the next one (1-based numbers)."""
    if not batches_done:
        return f"epoch-{epochs_done:04d}.keras"
    return f"epoch-{epochs_done + 1:04d}-batch-{batches_done:06d}.keras"


@dataclass
class Progress:
    """state/progress.json: replaced after every checkpoint is saved, so it always names a whole checkpoint.

    A checkpoint lies after epoch `epochs_done` and `batches_done` batches of the next one (0: at an epoch's end).
    epoch_so_far: inside an epoch, Keras' running means of its training metrics over those batches and its
    seconds so far, so that the resumed epoch's history row is the whole epoch's. random_state: what the training
    steps draw from (dropout's seed generators, torch's generator), restored before the next step (training.py)."""

    epochs_done: int = 0
    checkpoint: str | None = None  # the checkpoint's file name in state/
    history: list[dict] = field(default_factory=list)  # one row per finished epoch, as history.csv
    batches_done: int = 0
    epoch_so_far: dict | None = None
    random_state: dict | None = None  # None: a run recorded before it was saved

    @staticmethod
    def path(run_dir: Path) -> Path:
        return run_dir / STATE_DIR / PROGRESS_JSON

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return cls.path(run_dir).exists()

    @property
    def inside_epoch(self) -> bool:
        return self.batches_done > 0

    @classmethod
    def read(cls, run_dir: Path) -> Progress:
        """The run's progress; no epoch finished when there is none."""
        raw = read_json_object(cls.path(run_dir)) or {}

        def whole(name: str) -> int:
            value = raw.get(name)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

        history, so_far, random_state = raw.get("history"), raw.get("epoch_so_far"), raw.get("random_state")
        return cls(
            whole("epochs_done"),
            raw.get("checkpoint"),
            history if isinstance(history, list) else [],
            whole("batches_done"),
            so_far if isinstance(so_far, dict) else None,
            random_state if isinstance(random_state, dict) else None,
        )

    def write(self, run_dir: Path) -> None:
        write_atomic(self.path(run_dir), json.dumps(asdict(self)))
