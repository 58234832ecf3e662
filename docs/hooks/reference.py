"""mkdocs hook: what the reference shows from the code, made when the site is built, never copied by hand.

    <!-- options: build-aug -->              that command's option table, from the one definition of each option
                                             (builder/options.py, trainer/options.py, by augzarr.options.markdown_table)
    <!-- docstring: augzarr.store_format --> that module's docstring, as the plain text it is
    <!-- list: presets -->                   a registry's names, each with the first paragraph of its docstring
    ... <!-- names: keras-datasets --> ...   a registry's names within a sentence: `a`, `b` or `c`

A name that is not a command, a module or a registry stops the build."""

from __future__ import annotations

import importlib
import inspect
import re

from mkdocs.exceptions import PluginError

from augzarr.builder.options import BUILD_AUG, INSPECT_AUG
from augzarr.options import markdown_table
from augzarr.trainer.options import EVALUATE, TRAIN
from augzarr.wording import alternatives

# each console script -> its options' classes, in the order --help shows them
COMMANDS = {"build-aug": BUILD_AUG, "inspect-aug": INSPECT_AUG, "train": TRAIN, "evaluate": EVALUATE}
MARKER = re.compile(r"^<!-- (options|docstring|list): (\S+) -->$", re.MULTILINE)
NAMES = re.compile(r"<!-- names: (\S+) -->")


def built_in_models() -> dict:
    from augzarr.trainer import models
    from augzarr.trainer.options import MODELS

    return {name: getattr(models, name) for name in MODELS}


def presets() -> dict:
    from augzarr.builder.policies import PRESETS

    return PRESETS


def keras_datasets() -> dict:
    from augzarr.sources.keras_datasets import KERAS_DATASETS

    return KERAS_DATASETS


# what a page may list: each registry, read from its one home when the site is built
REGISTRIES = {"presets": presets, "models": built_in_models, "keras-datasets": keras_datasets}


def registry(name: str, page) -> dict:
    if name not in REGISTRIES:
        raise PluginError(
            f"{page.file.src_uri}: no registry {name!r} to list; the registries are {', '.join(REGISTRIES)}"
        )
    return REGISTRIES[name]()


def first_paragraph(thing) -> str:
    return " ".join(inspect.getdoc(thing).split("\n\n")[0].split())


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "docstring":
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise PluginError(f"{page.file.src_uri}: no module {name} for a docstring ({exc})") from None
            return "```text\n" + inspect.getdoc(module) + "\n```"
        if kind == "list":
            return "\n".join(f"- `{key}`: {first_paragraph(value)}" for key, value in registry(name, page).items())
        if name not in COMMANDS:
            raise PluginError(
                f"{page.file.src_uri}: no command {name!r} for an option table; the commands are {', '.join(COMMANDS)}"
            )
        return markdown_table(*COMMANDS[name])

    markdown = MARKER.sub(replace, markdown)
    return NAMES.sub(lambda match: alternatives(f"`{name}`" for name in registry(match.group(1), page)), markdown)
