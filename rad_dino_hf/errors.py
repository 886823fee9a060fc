"""Faults the user can fix, and how the command-line entry points report them.

A `UserError` is raised where a fault is detected (a missing file, a bad option, a table without the named column,
a checkpoint that does not verify); its message names the file or option at fault and says what to do. The entry
points print it as one line `error: ...` and exit with `USAGE_EXIT_CODE`, without a traceback unless `--debug`.
Anything else is an internal error and keeps its traceback.
"""

import contextlib
import sys
from collections.abc import Iterator

USAGE_EXIT_CODE = 2  # as argparse exits on a bad command line


class UserError(ValueError):
    """A fault in the user's input or environment; the message names the file or option and what to do.

    A `ValueError`: the value given (a path, an option, a table) is the fault."""


@contextlib.contextmanager
def reported_user_errors(debug: bool = False) -> Iterator[None]:
    """Turn a `UserError` raised inside into `error: MESSAGE` on stderr and `SystemExit(USAGE_EXIT_CODE)`;
    with `debug`, let it through with its traceback."""
    try:
        yield
    except UserError as error:
        if debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the message held
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(USAGE_EXIT_CODE) from error
