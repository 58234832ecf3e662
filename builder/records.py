"""The build's own records, each read and written here only: the build identity (every argument that changes a
store's bytes) and .build/build.json (the claim of an unfinished build: its identity, source hash and build id).

The identity's JSON is part of every store (attrs 'identity') and of every build.json: its keys, their order and
the keys left out at their default are as stores built before have them, so those stores are still recognised as
"already complete", and their unfinished builds resume.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from augzarr.storage import Storage
from augzarr.store_format import BUILD_JSON, IMAGE_CODEC, RAW_FORMAT_VERSION


@dataclass(frozen=True)
class BuildIdentity:
    """Every argument that changes the store's bytes; a resumed or repeated build must match it exactly."""

    source_kind: str
    class_names: list[str]
    image_shape: list[int]
    limit: int | None
    copies: int
    include_original: bool
    val_fraction: float | None  # None: the source brings its own validation split
    seed: int
    chunk_rows: int
    policy: dict  # the policy's serialized form, as JSON reads it back
    skip_bad: bool = False
    # how --image-size fitted each image (images.FITS); stretch also without --image-size, and before --fit existed
    fit: str = "stretch"
    # copies cut from the source staged above the stored size (--stage-scale): its scale, codec and encoder; None: off
    staging: dict | None = None
    # recorded in the attributes, so part of the store: another text needs --overwrite, never a silent "nothing to do"
    license: str | None = None
    provenance: str | None = None
    format_version: int = RAW_FORMAT_VERSION
    codec: str = IMAGE_CODEC  # a coded store's spec (jpeg:90), with format_version 2
    encoder: dict | None = None  # a coded store's encoder libraries and their versions: they decide its bytes

    def to_json(self) -> dict:
        """The recorded form: skip_bad, fit, staging, license and provenance only where they are not their default."""
        return {
            "format_version": self.format_version,
            "source_kind": self.source_kind,
            "class_names": list(self.class_names),
            "image_shape": list(self.image_shape),
            "limit": self.limit,
            "copies": self.copies,
            "include_original": self.include_original,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "chunk_rows": self.chunk_rows,
            "policy": json.loads(json.dumps(self.policy)),
            "codec": self.codec,
            **({"encoder": dict(self.encoder)} if self.encoder is not None else {}),
            **({"skip_bad": True} if self.skip_bad else {}),
            **({"fit": self.fit} if self.fit != "stretch" else {}),
            **({"staging": json.loads(json.dumps(self.staging))} if self.staging is not None else {}),
            **{name: text for name in ("license", "provenance") if (text := getattr(self, name))},
        }

    def matches(self, recorded: dict | None) -> bool:
        return recorded == self.to_json()

    def difference(self, recorded: dict | None) -> str:
        """The arguments in which a recorded identity differs from this one, named for a message."""
        return describe_difference(recorded or {}, self.to_json())


@dataclass
class BuildRecord:
    """.build/build.json: written when a build claims its location, completed with the source's content hash once it
    is decoded, removed when the store is complete."""

    identity: dict  # BuildIdentity.to_json() of the build that claimed it
    source_hash: str | None = None  # None until the source is decoded
    build_id: str = ""  # a new one each claim; "" in a record written before build ids existed

    @classmethod
    def claim(cls, identity: BuildIdentity) -> BuildRecord:
        return cls(identity.to_json(), None, uuid.uuid4().hex)

    @classmethod
    def read(cls, storage: Storage) -> BuildRecord:
        found = storage.read_json(BUILD_JSON)
        return cls(found["identity"], found.get("source_hash"), found.get("build_id", ""))

    def write(self, storage: Storage) -> None:
        storage.write_json(
            BUILD_JSON, {"identity": self.identity, "source_hash": self.source_hash, "build_id": self.build_id}
        )


def current_build_id(storage: Storage) -> str:
    """The build id the store's build.json holds now: a task of a build replaced since (--overwrite) must not write."""
    return BuildRecord.read(storage).build_id


IDENTITY_DEFAULTS = {
    "skip_bad": False,
    "fit": "stretch",
    "staging": None,
    "license": None,
    "provenance": None,
    "encoder": None,
}  # keys an identity leaves out at their default
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
    if (
        isinstance(old, dict) and isinstance(new, dict) and old.get("name") == new.get("name")
    ):  # another name says it all
        return [
            found
            for key in sorted(set(old) | set(new), key=str)
            for found in differences(old.get(key, MISSING), new.get(key, MISSING), [*path, str(key)])
        ]
    if (
        isinstance(old, list)
        and isinstance(new, list)
        and len(old) == len(new)
        and all(isinstance(x, dict) for x in old + new)
    ):
        return [
            found for i, (a, b) in enumerate(zip(old, new)) for found in differences(a, b, [*path, item_name(a, b, i)])
        ]
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
