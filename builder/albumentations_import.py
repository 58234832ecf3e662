"""albumentations as augzarr uses it: without its PyTorch bridge unless a policy names it, without its update check.

albumentations imports albumentations.pytorch, and so torch (1.5-2 s of CPU), on its first import and on every
A.from_dict or A.load whenever torch is installed (the torch extra and augzarr[dev] install it), and asks PyPI for
its newest version on its first import (a network request, up to 2 s where the network is slow or closed). Every
build-aug and every build worker (each rebuilds its pipeline with A.from_dict) paid both, for nothing: augzarr's
policies keep uint8 arrays and never turn them into tensors. A policy that names a transform of the bridge
(ToTensorV2) still loads, with the bridge, and policy_check refuses it as before; `import albumentations.pytorch`
works as usual afterwards.

Every augzarr module takes albumentations from here, so this runs before albumentations' first import in a process;
a process that imported albumentations itself keeps that import as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

BRIDGE = "albumentations.pytorch"
UPDATE_CHECK = "NO_ALBUMENTATIONS_UPDATE"


@contextlib.contextmanager
def bridge_left_out() -> Iterator[None]:
    """albumentations' own `import albumentations.pytorch` raises ImportError, which it ignores, in this block."""
    if BRIDGE in sys.modules:  # imported already: nothing to save
        yield
        return
    sys.modules[BRIDGE] = None
    try:
        yield
    finally:
        if sys.modules.get(BRIDGE, False) is None:
            del sys.modules[BRIDGE]


def import_albumentations():
    if "albumentations" not in sys.modules:
        check_setting = os.environ.get(UPDATE_CHECK)
        os.environ[UPDATE_CHECK] = "1"
        try:
            with bridge_left_out():
                import albumentations  # noqa: F401
        finally:
            if check_setting is None:
                del os.environ[UPDATE_CHECK]
            else:
                os.environ[UPDATE_CHECK] = check_setting
    return sys.modules["albumentations"]


A = import_albumentations()

from albumentations.augmentations.geometric import functional as fgeometric  # noqa: E402
from albumentations.core.composition import BaseCompose  # noqa: E402
from albumentations.core.transforms_interface import BasicTransform  # noqa: E402


def without_bridge_if_unneeded(rebuild: Callable, *args, **kwargs):
    """rebuild (A.from_dict, A.load) without the bridge; again with it where the pipeline names a transform that only
    the bridge registers (albumentations then raises KeyError on the name)."""
    try:
        with bridge_left_out():
            return rebuild(*args, **kwargs)
    except KeyError:
        if BRIDGE in sys.modules:
            raise
    return rebuild(*args, **kwargs)


def pipeline_from_dict(serialized: dict):
    return without_bridge_if_unneeded(A.from_dict, serialized)


def load_pipeline(path: str, data_format: str):
    return without_bridge_if_unneeded(A.load, path, data_format=data_format)


__all__ = ["A", "BaseCompose", "BasicTransform", "fgeometric", "load_pipeline", "pipeline_from_dict"]
