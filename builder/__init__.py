"""augzarr builder: pre-generate augmented copies of a dataset into a zarr store."""
