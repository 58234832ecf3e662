"""The source seam: every --source goes through a SourceKind, picked by what the spec names (base.py says how).

keras_datasets.py (--source NAME, a name of its KERAS_DATASETS), cifar_pickle.py (the official CIFAR-10
archive or folder), hf_datasets.py (a folder saved by Hugging Face datasets), image_folder.py (any other folder).
Adding a kind is one class in one new module, registered with @register, plus its import line below.
"""

from . import cifar_pickle, hf_datasets, image_folder, keras_datasets  # noqa: E402,F401  (each registers its kind)
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
