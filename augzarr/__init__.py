"""augzarr: pre-generate augmented image datasets into chunked zarr stores and stream them into Keras.

The folders builder/ and trainer/ install as augzarr.builder (build-aug, inspect-aug) and
augzarr.trainer (train, evaluate), so no generic top-level `builder` or `trainer` module clashes with
another package's. The public API (the names a user imports) will live here; for now this package holds
only the version.
"""

__version__ = "0.1.0"  # the one home of the version: pyproject.toml and the store's attrs read it
