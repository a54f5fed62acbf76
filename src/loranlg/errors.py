"""User-facing errors: every bad input ends with file:line, what was expected, and a non-zero exit."""

import sys


class InputError(Exception):
    """A problem with what the user gave us (a file, a flag, a checkpoint), not a bug of ours."""

    def __init__(self, message, path=None, line=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    def __str__(self):
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return where + self.message


EXIT_INPUT_ERROR = 2


def run_cli(main, argv=None):
    """Run a command's main(argv); an InputError becomes one 'error:' line on stderr and exit code 2."""
    try:
        return main(argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
