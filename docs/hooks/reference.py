"""mkdocs hook: each command's option table, made when the site is built from the one definition of each option
(builder/options.py, trainer/options.py, through augzarr.options.markdown_table), never copied by hand.

A page asks for a table with the line

    <!-- options: build-aug -->

which is replaced by that command's table; a name that is not a command stops the build."""

from __future__ import annotations

import re

from mkdocs.exceptions import PluginError

from augzarr.builder.options import BUILD_AUG, INSPECT_AUG
from augzarr.options import markdown_table
from augzarr.trainer.options import EVALUATE, TRAIN

# each console script -> its options' classes, in the order --help shows them
COMMANDS = {"build-aug": BUILD_AUG, "inspect-aug": INSPECT_AUG, "train": TRAIN, "evaluate": EVALUATE}
MARKER = re.compile(r"^<!-- options: (\S+) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in COMMANDS:
            raise PluginError(f"{page.file.src_uri}: no command {name!r} for an option table; the commands are {', '.join(COMMANDS)}")
        return markdown_table(*COMMANDS[name])

    return MARKER.sub(table, markdown)
