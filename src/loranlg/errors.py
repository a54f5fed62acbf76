"""User-facing errors: every bad input ends with file:line, what was expected, and a non-zero exit."""

import contextlib
import os
import sys
import threading
import traceback

EXIT_INPUT_ERROR = 2
EXIT_FAULT = 1
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal's number, as a shell reports a killed command


class InputError(Exception):
    """A problem with what the user gave us (a file, a flag, a checkpoint), not a bug of ours."""

    exit_code = EXIT_INPUT_ERROR

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


class RunError(InputError):
    """The run could not go on, through no fault of its input: a full disk, a non-finite loss. Exit code 1."""
    exit_code = EXIT_FAULT


class DiskFull(RunError):
    """No space left (or over quota) while writing `path`; a file of that name from before is kept."""

    def __init__(self, path, detail="no space left on the device"):
        super().__init__(f"{detail} while writing this file (nothing was written under its name; an earlier "
                         "file of that name is kept)", path)


class Interrupted(RunError):
    """Ctrl-C (SIGINT) or SIGTERM: exit code 130 or 143."""

    def __init__(self, message, exit_code=EXIT_SIGINT):
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(main, argv=None, exit_at_once=False):
    """Run a command's main(argv); an InputError becomes one 'error:' line on stderr and its exit code (2 for bad
    input, 1 for a fault such as a full disk, 130 / 143 when interrupted); Ctrl-C elsewhere exits 130.
    exit_at_once: once main is done (its files written), end the process with os._exit, without the interpreter's
    teardown of torch: it takes seconds, and with several gloo processes it can abort the exit (SIGABRT, seen
    on torch 2.13 in about one run of twenty). The operating system frees everything all the same."""
    code, result = 0, None
    try:
        result = main(argv)
    except InputError as err:
        print_error(f"error: {err}")
        code = err.exit_code
    except KeyboardInterrupt:
        print_error("error: interrupted (Ctrl-C); outputs are written only when complete, so none was left "
                    "half-written")
        code = EXIT_SIGINT
    except Exception:  # a bug, or a library's failure: its traceback, then the same quick exit
        if not exit_at_once:
            raise
        traceback.print_exc()
        code = EXIT_FAULT
    if exit_at_once:
        end_process(code)
    if code:
        sys.exit(code)
    return result


def end_process(code):
    """os._exit(code) once the threads Python would wait for (a checkpoint write under way) are done and both
    streams are flushed."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken pipe: nothing more to say
            stream.flush()
    os._exit(code)


def print_error(line):
    """One line on stderr in a single write: the ranks of a distributed run share the stream, and print's separate
    newline lets another rank's line land in the middle."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
