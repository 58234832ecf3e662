"""augzarr: pre-generate augmented image datasets into chunked zarr stores and stream them into Keras.

The public API (docs/guides/python.md) is the names in __all__:

    import augzarr
    store = augzarr.build("cifar10", out="data/aug.zarr", copies=5)
    store = augzarr.open_store("data/aug.zarr")
    train = store.stream("train")
    model.fit(train, steps_per_epoch=train.batches_per_epoch, validation_data=store.stream("val"), epochs=20)

They load on first use (augzarr.api), so `import augzarr` stays cheap. The folders builder/ and trainer/
install as augzarr.builder (build-aug, inspect-aug) and augzarr.trainer (train, evaluate): the commands'
internals, not part of the API.
"""

__version__ = "0.1.0"  # the one home of the version: pyproject.toml and the store's attrs read it

__all__ = ["Store", "UserError", "__version__", "build", "open_store"]


def __getattr__(name: str):
    if name in ("Store", "build", "open_store"):
        from augzarr import api

        return getattr(api, name)
    if name == "UserError":
        from augzarr.errors import UserError

        return UserError
    raise AttributeError(f"module 'augzarr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
