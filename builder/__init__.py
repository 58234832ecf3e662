"""augzarr builder: pre-generate augmented copies of a dataset into a zarr store."""

__version__ = "0.1.0"
