"""The source seam: every --source goes through a SourceKind, picked by what the spec names (base.py says how).

keras_datasets.py (--source NAME, a name of its KERAS_DATASETS), cifar_pickle.py (the official CIFAR-10
archive or folder), hf_datasets.py (a folder saved by Hugging Face datasets), image_folder.py (any other folder).
Adding a kind is one class in one new module of this package, registered with @register: every module here is
imported below, in name order (the fallback kinds are asked last whatever their names).
"""

import importlib
import pkgutil

from .base import (  # noqa: F401
    SPLIT_NAMES,
    OpenRequest,
    Source,
    SourceKind,
    Split,
    check_label_mode,
    kind_of,
    open_source,
    register,
    source_kinds,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # each registers its kind
