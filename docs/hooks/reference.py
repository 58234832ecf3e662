"""mkdocs hook: what the reference shows from the code, made when the site is built, never copied by hand.

    <!-- options: build-aug -->              that command's option table, from the one definition of each option
                                             (builder/options.py, trainer/options.py, by augzarr.options.markdown_table)
    <!-- docstring: augzarr.store_format --> that module's docstring, as the plain text it is

A name that is not a command or a module stops the build."""

from __future__ import annotations

import importlib
import inspect
import re

from mkdocs.exceptions import PluginError

from augzarr.builder.options import BUILD_AUG, INSPECT_AUG
from augzarr.options import markdown_table
from augzarr.trainer.options import EVALUATE, TRAIN

# each console script -> its options' classes, in the order --help shows them
COMMANDS = {"build-aug": BUILD_AUG, "inspect-aug": INSPECT_AUG, "train": TRAIN, "evaluate": EVALUATE}
MARKER = re.compile(r"^<!-- (options|docstring): (\S+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "docstring":
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise PluginError(f"{page.file.src_uri}: no module {name} for a docstring ({exc})") from None
            return "```text\n" + inspect.getdoc(module) + "\n```"
        if name not in COMMANDS:
            raise PluginError(
                f"{page.file.src_uri}: no command {name!r} for an option table; the commands are {', '.join(COMMANDS)}"
            )
        return markdown_table(*COMMANDS[name])

    return MARKER.sub(replace, markdown)
