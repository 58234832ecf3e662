"""The storage seam: every byte of a store goes through a Storage, picked by the location's URL scheme.

A plain path or file:// URL -> LocalStorage (local.py); s3://, gs://, az:// -> ObjectStorage
(objectstore.py, on obstore). Adding a backend is one class in one new module of this package, registered for its
URL schemes with @register: every module here is imported below.
"""

import importlib
import pkgutil

from .base import LeaseHeld, Storage, StorageError, is_url, open_storage, register  # noqa: F401

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # each registers its URL schemes
