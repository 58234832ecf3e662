"""The storage seam: every byte of a store goes through a Storage, picked by the location's URL scheme.

A plain path or file:// URL -> LocalStorage (local.py); s3://, gs://, az:// -> ObjectStorage
(objectstore.py, on obstore). Adding a backend is one class in one new module, registered for
its URL schemes with @register, plus its import line below.
"""

from . import local, objectstore  # noqa: E402,F401  (each registers its schemes)
from .base import LeaseHeld, Storage, StorageError, is_url, open_storage, register  # noqa: F401
