"""One definition per option (issue #22 point 5; issue #21 points 3, 8 and 13): every command's options come from
the dataclasses of builder/options.py and trainer/options.py, and the command line, the Python API and the docs'
reference agree with them."""

from __future__ import annotations

import dataclasses
import html
import inspect
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer
from conftest import run_cli

import augzarr
from augzarr.builder.cli import build_app, inspect_app
from augzarr.builder.options import BUILD_AUG, INSPECT_AUG, BuildOptions, InspectOptions, SheetOptions
from augzarr.errors import OptionError
from augzarr.options import DEFAULT_STORE, check_fields, defaults, markdown_table, option, options_of
from augzarr.trainer.cli import evaluate_app, train_app
from augzarr.trainer.options import EVALUATE, MODELS, TRAIN, TrainOptions

COMMANDS = {  # command -> (typer app, the dataclasses its options come from)
    "build-aug": (build_app, BUILD_AUG),
    "inspect-aug": (inspect_app, INSPECT_AUG),
    "train": (train_app, TRAIN),
    "evaluate": (evaluate_app, EVALUATE),
}


def click_command(app):
    return typer.main.get_command(app)


def cli_params(app) -> dict:
    return {p.name: p for p in click_command(app).params if p.name != "help"}


# -- one definition: the CLI, the API and the library agree ----------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_has_exactly_the_options_of_its_dataclasses_with_their_defaults(name):
    app, classes = COMMANDS[name]
    declared = {opt.name: opt for cls in classes for opt in options_of(cls)}
    params = cli_params(app)
    assert list(params) == list(declared)
    for opt_name, param in params.items():
        opt = declared[opt_name]
        assert param.required == opt.required, opt_name
        if not opt.required:
            assert param.default == opt.default, opt_name


def test_the_python_api_signatures_agree_with_the_cli_and_the_library():
    build = inspect.signature(augzarr.build).parameters
    named = {n: p for n, p in build.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and n != "progress"}
    library = defaults(BuildOptions)
    assert list(named) == list(library)  # every option of build-aug's library side, in its order, and nothing else
    assert {n: p.default for n, p in named.items()} == library
    hints = {f.name: f.type for f in dataclasses.fields(BuildOptions)}
    assert all(named[n].annotation == hints[n] for n in library if n not in ("source", "out")), (
        "a keyword's type differs from its option's"
    )
    cli = cli_params(build_app)
    assert {n: cli[n].default for n in library} == library
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in named.items() if n not in ("source", "out"))

    stream = inspect.signature(augzarr.Store.stream).parameters
    train = defaults(TrainOptions)
    train_cli = cli_params(train_app)
    for name in ("batch_size", "seed", "online", "buffer_chunks"):  # train's options of the same name
        assert stream[name].default == train[name] == train_cli[name].default, name
    assert inspect.signature(augzarr.Store.contact_sheet).parameters["count"].default == defaults(SheetOptions)["count"]


def test_the_default_store_is_the_same_everywhere():
    assert BuildOptions().out == InspectOptions().store == TrainOptions().store == DEFAULT_STORE == "data/aug.zarr"
    assert inspect.signature(augzarr.build).parameters["out"].default == DEFAULT_STORE
    assert (
        cli_params(build_app)["out"].default
        == cli_params(inspect_app)["store"].default
        == cli_params(train_app)["store"].default
    )


# -- issue #21 point 13: --help shows each real default -------------------------------------------------


def help_of(command: str) -> dict[str, str]:
    """`command --help` as each option's entry, its wrapped lines joined: {"--epochs": "--epochs <int> Passes ... [default: 20]"}."""
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    entries: dict[str, str] = {}
    last = None
    for line in result.stdout.splitlines():
        if line.startswith("  --"):
            last = line.split()[0]
            entries[last] = line.strip()
        elif last and line.startswith("      ") and line.strip():
            entries[last] += ("" if entries[last].endswith("-") else " ") + line.strip()
        else:
            last = None
    return entries


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_every_default(name):
    lines = help_of(name)
    _, classes = COMMANDS[name]
    for opt in (opt for cls in classes for opt in options_of(cls)):
        line = lines[opt.spec.flags[0].split("/")[0] if opt.spec.flags else opt.label]
        assert not line.rstrip().endswith(" ."), line  # what a swallowed "[default: ...]" left behind
        if opt.required:
            assert "[required]" in line
        elif opt.type is bool:  # a switch shows its default side; a lone flag (--json) is off unless given
            switch = not opt.spec.flags or "/" in opt.spec.flags[0]
            assert ("[default: " in line) == switch, line
        elif opt.default not in (None, "") and opt.spec.default_text is None:
            assert f"[default: {opt.default}]" in line, line
        elif opt.spec.default_text is not None or opt.default == "":
            assert f"[default: ({opt.default_text()})]" in line, line


def test_train_help_names_its_defaults():
    shown = help_of("train")
    for flag, default in [
        ("--epochs", "20"),
        ("--batch-size", "128"),
        ("--optimizer", "rmsprop"),
        ("--lr-schedule", "cosine"),
        ("--model", "deep"),
        ("--seed", "0"),
        ("--buffer-chunks", "8"),
        ("--store", "data/aug.zarr"),
    ]:
        assert shown[flag].endswith(f"[default: {default}]"), shown[flag]
    assert shown["--mix-alpha"].endswith("[default: (0.2 for mixup, 1.0 for cutmix)]")


def test_help_lists_the_names_of_each_registry():
    from augzarr.builder.policies import PRESETS
    from augzarr.sources.keras_datasets import KERAS_DATASETS

    build = help_of("build-aug")
    assert all(name in build["--policy"] for name in PRESETS)
    assert all(name in build["--source"] for name in KERAS_DATASETS)
    assert all(f"{name} ({about})" in help_of("train")["--model"] for name, about in MODELS.items())


def test_refusals_name_every_entry_of_each_registry(tmp_path):
    """An unknown preset, model, codec or source is refused with the registry's whole list, read from the registry."""
    from augzarr.builder.policies import PRESETS, load_policy
    from augzarr.codecs import CODECS, parse_spec
    from augzarr.errors import UserError
    from augzarr.sources import open_source, source_kinds

    refusals = {
        "--policy": (lambda: load_policy("gentle", (32, 32, 3)), PRESETS),
        "--model": (lambda: TrainOptions(model="wide").validate_model(), MODELS),
        "--codec": (lambda: parse_spec("png"), CODECS),
        "--source": (lambda: open_source(str(tmp_path / "nowhere")), [kind.described for kind in source_kinds()]),
    }
    for flag, (refuse, names) in refusals.items():
        with pytest.raises(UserError) as refused:
            refuse()
        assert flag in str(refused.value) and all(name in str(refused.value) for name in names), str(refused.value)


# -- issue #21 point 3: a single-value option given twice is refused ------------------------------------


def repeated(param) -> list[str]:
    flag = param.opts[0]
    if param.is_flag:
        return [flag, (param.secondary_opts or param.opts)[0]]
    return [flag, "1", flag, "2"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_single_value_option_given_twice_is_refused_naming_it(name):
    app, _ = COMMANDS[name]
    command = click_command(app)
    for param in cli_params(app).values():
        args = repeated(param) + (["--model", "run"] if name == "evaluate" and param.name != "model" else [])
        with pytest.raises(OptionError, match=f"^{param.opts[0]} is given more than once .*: give it once$"):
            command.main(args, prog_name=name, standalone_mode=False)


def test_train_with_two_mixes_exits_2_with_one_line_and_writes_nothing(small_store, tmp_path):
    result = run_cli(
        "train", "--store", str(small_store), "--out", str(tmp_path / "run"), "--mix", "mixup", "--mix", "cutmix"
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "train: error: --mix is given more than once (--mix mixup, --mix cutmix): give it once"
    )
    assert not (tmp_path / "run").exists()


def test_a_switch_given_both_ways_is_refused():
    result = run_cli("build-aug", "--include-original", "--no-include-original", "--copies", "0")
    assert result.returncode == 2 and result.stderr.strip() == (
        "build-aug: error: --include-original is given more than once (--include-original, --no-include-original): give it once"
    )


# -- the checks: the same rules and messages for the CLI and Python -------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"copies": 2.7}, "--copies must be a whole number, not 2.7 (a float)"),
        ({"copies": "2"}, "--copies must be a whole number, not '2' (a str)"),
        ({"copies": True}, "--copies must be a whole number, not True (a bool)"),
        ({"val_fraction": "0.3"}, "--val-fraction must be a number, not '0.3' (a str)"),
        ({"val_fraction": math.nan}, "--val-fraction must be in [0, 1)"),
        ({"policy": {"transform": []}}, "--policy must be a string, not a dict"),
        ({"seed": 2**63}, "--seed must be in [0, 2**63)"),
        ({"image_size": 0}, "--image-size must be in [1, 4096]"),
        ({"chunk_size": 0}, "--chunk-size must be at least 1"),
        ({"include_original": 1}, "--include-original must be True or False, not 1 (an int)"),
        ({"out": 3}, "--out must be a string or a path, not 3 (an int)"),
        ({"license": "a\x1bb"}, "--license holds the control character"),
    ],
)
def test_build_options_refuse_a_wrong_type_or_value_in_one_line(values, message):
    with pytest.raises(OptionError) as raised:
        BuildOptions(**values).validate()
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_numbers_of_numpy_become_pythons_and_paths_are_taken_for_text():
    options = BuildOptions(copies=np.int64(3), val_fraction=np.float32(0.25), out=Path("x.zarr"))
    options.validate()
    assert type(options.copies) is int and options.copies == 3
    assert type(options.val_fraction) is float and options.val_fraction == 0.25
    assert options.out == Path("x.zarr")
    plain = BuildOptions(val_fraction=0)
    plain.validate()
    assert type(plain.val_fraction) is int  # a Python number is kept as given: the store records what it always did


@pytest.mark.parametrize(
    "values, message",
    [
        ({"epochs": 0}, "--epochs must be in [1, 100000]"),
        ({"learning_rate": 0.0}, "--learning-rate must be in (0, 10.0]"),
        ({"learning_rate": math.inf}, "--learning-rate must be in (0, 10.0]"),
        ({"optimizer": "lion"}, "--optimizer must be one of rmsprop, adam, sgd"),
        ({"mix": "blend"}, "--mix must be one of mixup, cutmix"),
        ({"online": "flip,spin"}, "--online: unknown online operation spin: choose from flip, shift, erase"),
        ({"buffer_chunks": 0}, "--buffer-chunks must be at least 1"),
        ({"distribute": "yes"}, "--distribute must be True or False, not 'yes' (a str)"),
    ],
)
def test_train_options_refuse_a_wrong_type_or_value_in_one_line(values, message):
    with pytest.raises(OptionError) as raised:
        TrainOptions(**values).validate()
    assert str(raised.value) == message


def test_an_option_defined_once_gives_its_limits_and_choices_to_the_checks_and_the_table():
    @dataclass
    class Toy:
        size: int = option(4, "Side | of the square.", low=1, high=8)
        mode: str = option("", "One of {choices}.", choices={"a": "first", "b": "second"})
        rate: float | None = option(None, "A rate.", low=0, low_open=True, default_text="automatic")
        api_only: int = option(1, "Python only.", low=0, cli=False)

    check_fields(Toy(size=8, mode="b", rate=0.5))
    for values, message in [
        ({"size": 9}, "--size must be in [1, 8]"),
        ({"mode": "c"}, "--mode must be one of a, b"),
        ({"rate": 0}, "--rate must be above 0"),
        ({"api_only": -1}, "api_only must be at least 0"),
    ]:
        with pytest.raises(OptionError, match=f"^{message.replace('[', '.').replace(']', '.')}$"):
            check_fields(Toy(**values))
    table = markdown_table(Toy).splitlines()
    assert table[:2] == ["| option | default | meaning |", "| --- | --- | --- |"]
    assert table[2] == "| `--size` | 4 | Side \\| of the square. |"
    assert table[3] == "| `--mode` | none | One of a (first), b (second). |"
    assert table[4] == "| `--rate` | automatic | A rate. |"


@pytest.mark.parametrize("name", COMMANDS)
def test_the_reference_table_has_a_row_per_option_with_its_default(name):
    _, classes = COMMANDS[name]
    rows = markdown_table(*classes).splitlines()[2:]
    opts = [opt for cls in classes for opt in options_of(cls)]
    assert len(rows) == len(opts)
    for row, opt in zip(rows, opts):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert (
            cells[0].startswith(f"`{opt.label}")
            and html.unescape(cells[1]) == opt.default_text()
            and html.unescape(cells[2]) == opt.help_text()
        )
        assert "{choices}" not in row


def test_the_trainer_imports_nothing_of_the_builder():
    code = (
        "import sys, augzarr.trainer.cli, augzarr.trainer.options, augzarr.options; "
        "print(sorted(m for m in sys.modules if m.startswith('augzarr.builder')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
