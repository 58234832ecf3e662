"""The exception types the command-line tools turn into a one-line message."""


class UserError(Exception):
    """A problem the user can fix: bad input, a bad option, a store in the wrong state.

    The message is one line that names the file or option and says what to do.
    The CLI prints it without a traceback and exits non-zero (1).
    """


class OptionError(UserError):
    """A bad option value: out of range, an unknown name, options that cannot go together.
    The CLI exits 2 for it, as typer/click do for the options they check themselves."""


def one_line(text: str) -> str:
    """text with every control or unprintable character (a newline in a file name, an escape
    sequence, a lone surrogate) written as its Python escape, so a message stays one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
