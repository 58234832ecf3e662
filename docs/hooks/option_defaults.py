"""A griffe extension for the Python API's page: augzarr.build's and Store.stream's defaults are written in the code as
the options' one definition (copies=BuildOptions.copies); the page shows their values (copies=5), read from there."""

from __future__ import annotations

from typing import Any

import griffe

from augzarr.builder.options import BuildOptions, SheetOptions
from augzarr.trainer.options import TrainOptions

DEFINITIONS = {cls.__name__: cls for cls in (BuildOptions, SheetOptions, TrainOptions)}


class OptionDefaults(griffe.Extension):
    def on_function_instance(self, *, func: griffe.Function, **kwargs: Any) -> None:
        for parameter in func.parameters:
            owner, dot, name = str(parameter.default).partition(".")
            if dot and owner in DEFINITIONS:
                parameter.default = repr(getattr(DEFINITIONS[owner], name))
