"""The one exception type the command-line tools turn into a one-line message."""


class UserError(Exception):
    """A problem the user can fix: bad input, a bad option, a store in the wrong state.

    The message is one line that names the file or option and says what to do.
    The CLI prints it without a traceback and exits non-zero.
    """
