"""One definition per option. Each command's options are the fields of a dataclass, and each field carries
everything about its option: default, type, limits or choices, and help text, written once:

    @dataclass
    class BuildOptions:
        copies: int = option(5, "Augmented copies of each training image.", low=0, high=MAX_COPIES)
        policy: str = option("crop-flip", "A preset ({choices}) or a policy file.", choices=lazy("augzarr.builder.policies", "PRESETS"), strict=False)

From there come:
  check_fields(options)         the checks of every field, for the command line and the Python API alike, each
                                failure an OptionError with one line naming the option ("--copies must be in [0, 10000]")
  command(app, *classes)        the typer command: --help shows each real default, a single-value option given
                                twice is refused, the function receives the dataclasses filled in
  markdown_table(*classes)      the reference table of a command's options, for the docs
Checks between options (--mix-alpha needs --mix) stay in the dataclass's validate(), after check_fields.

This module knows no command: builder/options.py and trainer/options.py hold the definitions, next to their code.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from augzarr.errors import OptionError

DEFAULT_STORE = "data/aug.zarr"  # where build-aug writes and inspect-aug, train and Python read, unless told otherwise

SPEC = "augzarr.option"  # the key of a field's metadata that holds its Spec
REQUIRED = dataclasses.MISSING  # option(REQUIRED, ...): the command line must give it (typer refuses it missing)

Choices = Sequence[str] | dict | Callable[[], Any]  # names, or names -> what each is; a function for a lazy registry


def lazy(module: str, name: str) -> Callable[[], Any]:
    """A registry that lives in a module too slow to import for every command (albumentations, OpenCV):
    read when a value is checked or help is shown, not when the command starts."""
    return lambda: getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Spec:
    help: str  # may hold {choices}: the names, as of when the help is shown
    flags: tuple[str, ...] = ()  # the command line's spelling when not --field-name (--json; --x/--no-x for a switch)
    low: float | None = None  # inclusive unless low_open
    high: float | Callable[[], float] | None = None  # inclusive unless high_open; a function for a machine's own limit
    low_open: bool = False
    high_open: bool = False
    high_text: str | None = None  # how the upper limit reads in a message (2**63)
    limit_note: str | None = None  # said after the limits (4 per core on this machine)
    choices: Choices | None = None  # the names a value must be one of (the default, such as "" for none, passes too)
    strict: bool = (
        True  # False: choices are listed in the help, another value is checked elsewhere (a file, PATH.py:FUNCTION)
    )
    check: Callable[[Any, str], Any] | None = None  # check(value, label) raises OptionError for what limits cannot say
    default_text: str | None = None  # the default as the help and docs show it, when the value does not say it (None)
    cli: bool = True  # False: a Python API argument only, named as in Python

    def names(self) -> list[str]:
        return list(self.registry())

    def registry(self) -> Sequence[str] | dict:
        return self.choices() if callable(self.choices) else self.choices or ()

    def listing(self) -> str:
        """The names for the help: each with its description where the registry maps names to one."""
        registry = self.registry()
        if isinstance(registry, dict) and all(isinstance(v, str) for v in registry.values()):
            return ", ".join(f"{name} ({about})" for name, about in registry.items())
        return ", ".join(registry)

    def limit(self) -> float | None:
        return self.high() if callable(self.high) else self.high


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field that is an option: its default, its help text and what Spec says."""
    return field(default=default, metadata={SPEC: Spec(help=help, **spec)})


def internal(default: Any) -> Any:
    """A dataclass field that is no option: set by the code (the CLI's preview folder, to keep out of --source)."""
    return field(default=default)


@dataclass(frozen=True)
class Option:
    """One field of an options dataclass, with what the command line, the checks and the docs need."""

    name: str
    type: type  # int, float, str, bool or Path: what the value must be
    nullable: bool  # None allowed (not given)
    also_path: bool  # str | Path: a path object is taken too
    default: Any
    spec: Spec

    @property
    def label(self) -> str:
        """How messages name it: as the command line spells it, or as Python does for an API-only argument."""
        if not self.spec.cli:
            return self.name
        return self.spec.flags[0].split("/")[0] if self.spec.flags else "--" + self.name.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def help_text(self) -> str:
        return self.spec.help.replace("{choices}", self.spec.listing())

    def default_text(self) -> str:
        if self.spec.default_text is not None:
            return self.spec.default_text
        if self.required:
            return "required"
        if self.default is None or self.default == "":
            return "none"
        if self.type is bool:
            return "on" if self.default else "off"
        return str(self.default)


def options_of(cls: type) -> list[Option]:
    """The options of a dataclass, in the order declared (fields without a Spec are not options)."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if SPEC not in f.metadata:
            continue
        kind, nullable, also_path = value_type(hints[f.name])
        found.append(Option(f.name, kind, nullable, also_path, f.default, f.metadata[SPEC]))
    return found


def value_type(hint: Any) -> tuple[type, bool, bool]:
    """int | None -> (int, True, False); str | Path -> (str, False, True)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in members
    kinds = [m for m in members if m is not type(None)]
    if kinds == [str, Path] or kinds == [Path, str]:
        return str, nullable, True
    if len(kinds) != 1 or kinds[0] not in (int, float, str, bool, Path):
        raise TypeError(f"an option is int, float, str, bool or Path, possibly | None: not {hint}")
    return kinds[0], nullable, False


# -- checks ---------------------------------------------------------------------------------------------

KIND_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "True or False", Path: "a path"}


def check_fields(options: Any) -> None:
    """Check every option of a filled-in options dataclass, in the order declared; raise OptionError with one
    line naming the first bad one. Numbers of numpy's types become Python's (int(np.int64(3)) is stored)."""
    for opt in options_of(type(options)):
        value = check_value(opt, getattr(options, opt.name))
        if value is not getattr(options, opt.name):
            object.__setattr__(options, opt.name, value)


def check_value(opt: Option, value: Any) -> Any:
    """value if it suits the option (a numpy number as Python's); OptionError otherwise."""
    if value is None:
        if opt.nullable:
            return None
        raise OptionError(f"{opt.label} must be {KIND_WORDS[opt.type]}, not None")
    value = checked_type(opt, value)
    if opt.type in (int, float):
        check_limits(opt, value)
    if opt.spec.choices is not None and opt.spec.strict and value != opt.default and value not in opt.spec.names():
        raise OptionError(f"{opt.label} must be one of {', '.join(opt.spec.names())}")
    if opt.spec.check is not None:
        opt.spec.check(value, opt.label)
    return value


def checked_type(opt: Option, value: Any) -> Any:
    kind = opt.type
    if kind is bool:
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"
        return bool(value) if ok else refuse_type(opt, value)
    if isinstance(value, bool):  # a bool is an int to Python, never a count or a fraction here
        refuse_type(opt, value)
    if kind is int:
        return (
            value
            if type(value) is int
            else int(value)
            if isinstance(value, numbers.Integral)
            else refuse_type(opt, value)
        )
    if kind is float:
        return (
            value
            if type(value) in (int, float)
            else float(value)
            if isinstance(value, numbers.Real)
            else refuse_type(opt, value)
        )
    if kind is Path:
        return value if isinstance(value, (str, os.PathLike)) else refuse_type(opt, value)
    if isinstance(value, str) or (opt.also_path and isinstance(value, os.PathLike)):
        return value
    return refuse_type(opt, value)


def refuse_type(opt: Option, value: Any) -> Any:
    shown, kind = repr(value), type(value).__name__
    kind = ("an " if kind[0] in "aeiou" else "a ") + kind
    what = f"{shown} ({kind})" if isinstance(value, (numbers.Number, str)) and len(shown) <= 40 else kind
    wanted = KIND_WORDS[opt.type] + (" or a path" if opt.also_path else "")
    raise OptionError(f"{opt.label} must be {wanted}, not {what}")


def check_limits(opt: Option, value: float) -> None:
    spec = opt.spec
    low, high = spec.low, spec.limit()
    above = low is None or (low < value if spec.low_open else low <= value)
    below = high is None or (value < high if spec.high_open else value <= high)
    if above and below:  # written so that NaN fails both
        return
    if high is None:
        message = f"{opt.label} must be {'above' if spec.low_open else 'at least'} {low}"
    else:
        message = (
            f"{opt.label} must be in {'(' if spec.low_open else '['}{low}, {spec.high_text or high}"
            f"{')' if spec.high_open else ']'}"
        )
    raise OptionError(message + (f" ({spec.limit_note})" if spec.limit_note else ""))


def check_arguments(cls: type, **values: Any) -> dict[str, Any]:
    """Check some options of cls given by name (a Python function that takes a few of a command's options);
    returns them as checked."""
    by_name = {opt.name: opt for opt in options_of(cls)}
    return {name: check_value(by_name[name], value) for name, value in values.items()}


def defaults(cls: type) -> dict[str, Any]:
    """Each option's default: what a Python signature that repeats a command's options must agree with."""
    return {opt.name: opt.default for opt in options_of(cls)}


# -- the command line -----------------------------------------------------------------------------------


def command(app: Any, *classes: type, name: str | None = None) -> Callable[[Callable], Callable]:
    """Register function(*instances of classes[, given=...]) as a command of the typer app, with one option per
    field of the classes. given (when the function takes it) is the set of option names set on the command line,
    for a command that tells a given value from its default (train --resume keeps the run's own)."""
    import typer

    def register(function: Callable) -> Callable:
        opts = [opt for cls in classes for opt in options_of(cls)]
        takes_given = "given" in inspect.signature(function).parameters

        def callback(ctx: typer.Context, **values: Any) -> Any:
            instances = [cls(**{opt.name: values[opt.name] for opt in options_of(cls)}) for cls in classes]
            given = {
                opt.name for opt in opts if getattr(ctx.get_parameter_source(opt.name), "name", "") == "COMMANDLINE"
            }
            return function(*instances, **({"given": given} if takes_given else {}))

        parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
        parameters += [
            inspect.Parameter(
                opt.name, inspect.Parameter.KEYWORD_ONLY, default=typer_option(opt), annotation=cli_type(opt)
            )
            for opt in opts
        ]
        callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        callback.__annotations__ = {p.name: p.annotation for p in parameters}
        callback.__doc__ = function.__doc__
        callback.__name__ = function.__name__
        app.command(name=name, cls=option_command_class(opts))(callback)
        return function

    return register


def cli_type(opt: Option) -> Any:
    return Optional[opt.type] if opt.nullable else opt.type  # noqa: UP045 (typer reads typing.Optional)


def typer_option(opt: Option) -> Any:
    import typer

    default = ... if opt.required else opt.default
    plain = opt.spec.default_text is None and opt.default not in (
        None,
        "",
    )  # a value typer shows as it is: [default: 20]
    show = (
        False
        if opt.required or (opt.default is None and opt.spec.default_text is None)
        else True
        if plain
        else opt.default_text()
    )  # else a description: [default: (all cores)]
    return typer.Option(default, *opt.spec.flags, help=opt.spec.help, show_default=show)


def option_command_class(opts: list[Option]) -> type:
    """typer's command, which also refuses an option given twice (click keeps the last silently: --mix mixup
    --mix cutmix would train with cutmix alone) and fills in the help's {choices} when the help is shown."""
    from typer.core import TyperCommand, TyperOption

    by_name = {opt.name: opt for opt in opts}

    class OptionCommand(TyperCommand):
        def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
            _, _, order = self.make_parser(ctx).parse_args(args=list(args))
            seen: set[str] = set()
            for param in order:
                if getattr(param, "multiple", False) or not getattr(param, "opts", None):
                    continue
                if param.name in seen:
                    flag = by_name[param.name].label if param.name in by_name else param.opts[0]
                    raise OptionError(
                        f"{flag} is given more than once ({', '.join(uses_of(param, args))}): give it once"
                    )
                seen.add(param.name)
            return super().parse_args(ctx, args)

        def format_help(self, ctx: Any, formatter: Any) -> None:
            for param in self.get_params(ctx):
                if isinstance(param, TyperOption) and param.name in by_name:
                    param.help = by_name[param.name].help_text()
            super().format_help(ctx, formatter)

    return OptionCommand


def uses_of(param: Any, args: list[str]) -> list[str]:
    """How the command line gave a parameter: ["--mix mixup", "--mix cutmix"]."""
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    uses = []
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in names:
            takes_value = not getattr(param, "is_flag", False)
            uses.append(f"{arg} {args[i + 1]}" if takes_value and i + 1 < len(args) else arg)
        elif any(arg.startswith(name + "=") for name in names):
            uses.append(arg)
    return uses


# -- the docs -------------------------------------------------------------------------------------------


def markdown_table(*classes: type) -> str:
    """The reference table of a command's options: | option | default | meaning |, one row per option."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for cls in classes:
        for opt in options_of(cls):
            flags = opt.spec.flags[0] if opt.spec.flags else opt.label
            if opt.type is bool and not opt.spec.flags:
                flags = f"{opt.label}/--no-{opt.label[2:]}"
            cells = [f"`{flags}`", markdown_text(opt.default_text()), markdown_text(opt.help_text())]
            rows.append("| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def markdown_text(text: str) -> str:
    """Plain text as markdown shows it: <class> in DIR/<class>/<image> would otherwise be read as an HTML tag and vanish."""
    return html.escape(text, quote=False)
