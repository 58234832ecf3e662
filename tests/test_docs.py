"""The documentation: the site builds with `mkdocs build --strict`; each command's reference page names every option of
the command line with its default and help; and every build-aug, inspect-aug, train and evaluate command written in
the README and the docs' pages is real: its options exist and pass the options' own checks (and where a page shows
the command refused, it is refused with that line)."""

from __future__ import annotations

import html
import inspect
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from conftest import REPO

from augzarr.builder.cli import build_app, inspect_app
from augzarr.builder.options import BUILD_AUG, INSPECT_AUG
from augzarr.errors import UserError
from augzarr.options import check_fields, options_of
from augzarr.trainer.cli import evaluate_app, train_app
from augzarr.trainer.options import EVALUATE, TRAIN

COMMANDS = {  # console script -> (its typer app, the dataclasses its options come from)
    "build-aug": (build_app, BUILD_AUG),
    "inspect-aug": (inspect_app, INSPECT_AUG),
    "train": (train_app, TRAIN),
    "evaluate": (evaluate_app, EVALUATE),
}
# the pages whose commands a user copies: the README and the site's own pages (not the records of figures that the
# site includes, BENCHMARKS.md and RELIABILITY.md, nor the object-storage study, which say what was run then)
DOC_FILES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if "object-storage" not in p.parts)]
SHELL_BLOCKS = ("shell", "bash", "sh", "console")  # console: only the lines after "$ " are commands
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
OPERATORS = {"&&", "||", ";", "|", "&"}


def test_the_commands_documented_are_the_console_scripts():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(COMMANDS) == set(scripts)


# -- the commands written in the docs ---------------------------------------------------------------------


def shell_commands(markdown: str) -> list[tuple[str, str | None]]:
    """(command line, the error line a console block shows it printing, or None) for each line of a fenced
    shell block, continuation lines joined."""
    found = []
    for language, body in FENCE.findall(markdown):
        if language not in SHELL_BLOCKS:
            continue
        lines = body.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if language == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            following = lines[i + 1] if i + 1 < len(lines) else ""
            found.append((line, following if ": error: " in following else None))
    return found


def augzarr_commands(line: str) -> list[list[str]]:
    """The augzarr commands of a shell line, each as [command, *arguments]: comments dropped, split at && ; |,
    leading VAR=value assignments skipped."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for word in [*words, ";"]:
        if word in OPERATORS:
            while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                current.pop(0)
            if current and os.path.basename(current[0]) in COMMANDS:
                commands.append([os.path.basename(current[0]), *current[1:]])
            current = []
        else:
            current.append(word)
    return commands


def refusal(name: str, args: list[str]) -> str | None:
    """The line the command would refuse these arguments with before doing anything, or None when its options are
    good: parsed by the command's own parser, then checked by its options' own checks."""
    app, classes = COMMANDS[name]
    if "--help" in args:
        return None
    try:
        context = typer.main.get_command(app).make_context(name, list(args))
        for cls in classes:
            options = cls(**{opt.name: context.params[opt.name] for opt in options_of(cls)})
            options.validate() if hasattr(options, "validate") else check_fields(options)
    except typer.TyperException as exc:  # the parser's own refusals (an unknown option, a value of the wrong type)
        return exc.format_message().replace("\n", " ")
    except UserError as exc:
        return str(exc)
    return None


def command_problems(markdown: str) -> list[str]:
    """Each augzarr command of the markdown whose options would be refused, unless the page shows that very
    refusal; and each refusal a page shows for options that are good, when the command cannot know more
    without running (a store's state), is taken as written."""
    problems = []
    for line, shown_error in shell_commands(markdown):
        for name, *args in augzarr_commands(line):
            refused = refusal(name, args)
            if refused is None:
                continue
            if shown_error is None:
                problems.append(f"{line.strip()}: {refused}")
            elif shown_error != f"{name}: error: {refused}":
                problems.append(f"{line.strip()}: refused with {refused!r}, the page shows {shown_error!r}")
    return problems


def test_the_command_checker_finds_an_unknown_option_a_bad_value_and_a_wrong_refusal():
    page = "\n".join(
        [
            "```shell",
            "build-aug --copies 5 --no-such-option 3     # a comment --not-an-option",
            "KERAS_BACKEND=jax train --store data/aug.zarr \\",
            "    --epochs 0 && evaluate --model runs/x --store data/aug.zarr",
            "```",
            "```console",
            "$ train --mix-alpha 0.3",
            "train: error: --mix-alpha needs --mix mixup or --mix cutmix",
            "$ build-aug --copies -1",
            "build-aug: error: --copies must be at least 0",
            "$ train --epochs 3",
            "```",
            "    train --no-such-option     (an indented block: not a command anyone copies)",
        ]
    )
    problems = command_problems(page)
    assert len(problems) == 3, problems
    assert "No such option: --no-such-option" in problems[0]
    assert (
        problems[1].startswith("KERAS_BACKEND=jax train --store data/aug.zarr")
        and "--epochs must be in [1, " in problems[1]
    )
    assert "refused with '--copies must be in [0, 10000]'" in problems[2]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_commands_written_in_the_docs_are_real(path):
    assert command_problems(path.read_text()) == []


def test_the_docs_show_every_command():
    written = [
        name
        for path in DOC_FILES
        for line, _ in shell_commands(path.read_text())
        for name, *_ in augzarr_commands(line)
    ]
    for name in COMMANDS:
        assert written.count(name) >= 3, f"the docs show {name} {written.count(name)} times"
    assert any(line.startswith("build-aug") for line, _ in shell_commands((REPO / "README.md").read_text()))


# -- the site ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as `make docs` builds it, from another folder (nothing in mkdocs.yml depends on where it runs)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(REPO / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=out.parent,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def page_text(site: Path, page: str) -> str:
    """A built page as its reader sees it: the text, whitespace collapsed."""
    body = (site / page / "index.html").read_text()
    body = body[body.index("<article") : body.index("</article>")]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_reference_page_names_every_option_with_its_default_and_help(site, name):
    app, classes = COMMANDS[name]
    text = page_text(site, f"reference/{name}")
    for param in typer.main.get_command(app).params:
        for flag in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if flag != "--help":
                assert flag in text, f"reference/{name} does not name {flag}"
    for opt in (opt for cls in classes for opt in options_of(cls)):
        assert words(opt.help_text()) in text, f"reference/{name}: {opt.label}'s help is not shown whole"
        assert words(opt.default_text()) in text, f"reference/{name}: {opt.label}'s default is not shown"


@pytest.mark.slow
def test_the_python_api_page_shows_the_signatures_with_their_values(site):
    text = page_text(site, "reference/python-api")
    # a signature's parts are spans of their own ("copies : int = 5"), its strings quoted as its formatter quotes
    # them (mkdocstrings formats signatures with ruff where ruff is installed: "crop-flip")
    tight = "".join(text.split()).replace('"', "'")
    for shown in ("copies:int=5", "policy:str='crop-flip'", "batch_size:int=128"):  # build's and stream's
        assert shown in tight
    assert "BuildOptions." not in text and "TrainOptions." not in text
    for name in ("build", "open_store", "Store", "stream", "contact_sheet", "UserError"):
        assert name in text


@pytest.mark.slow
def test_the_docstrings_are_shown_whole(site):
    import augzarr.api
    import augzarr.store_format

    api = page_text(site, "reference/python-api")
    for thing in (
        augzarr.api.build,
        augzarr.api.open_store,
        augzarr.api.Store,
        augzarr.api.Store.stream,
        augzarr.UserError,
    ):
        assert words(inspect.getdoc(thing)) in api, thing.__qualname__
    assert words(inspect.getdoc(augzarr.store_format)) in page_text(site, "reference/store-format")


@pytest.mark.slow
def test_the_site_includes_the_records_at_the_root(site):
    for page, record in [("background/benchmarks", "BENCHMARKS.md"), ("background/reliability", "RELIABILITY.md")]:
        first_heading = next(line for line in (REPO / record).read_text().splitlines() if line.startswith("## "))
        assert words(first_heading[3:]) in page_text(site, page)


@pytest.mark.slow
def test_the_reference_lists_presets_models_and_datasets_from_their_registries(site):
    """Each preset and built-in model with its docstring's first paragraph, each dataset of keras.datasets by name:
    read from the registries when the site is built, so a new one is listed with nothing else to edit."""
    from augzarr.builder.policies import PRESETS
    from augzarr.sources.keras_datasets import KERAS_DATASETS
    from augzarr.trainer import models
    from augzarr.trainer.options import MODELS

    def tight(text: str) -> str:  # the page's words without the code spans' markup or any space
        return "".join(text.replace("`", "").split())

    def listed(name: str, thing) -> str:
        return tight(f"{name}: {inspect.getdoc(thing).split(chr(10) * 2)[0]}")

    build, train = tight(page_text(site, "reference/build-aug")), tight(page_text(site, "reference/train"))
    for name, function in PRESETS.items():
        assert listed(name, function) in build, name
    for name in MODELS:
        assert listed(name, getattr(models, name)) in train, name
    assert tight("A dataset of keras.datasets: " + ", ".join(list(KERAS_DATASETS)[:-1])) in build
