"""Reading and writing the pipeline's files: JSON lines with located errors, outputs written atomically."""

import contextlib
import json
import os
import tempfile

from .errors import InputError


@contextlib.contextmanager
def atomic_output(path, mode="w", encoding="utf-8"):
    """Write to a temporary file beside `path`; rename it into place only if the block succeeds.

    A crash or an exception never leaves a partial file under the final name.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes it 0600; give it a normal file's mode
    except OSError as err:
        raise InputError(f"cannot write here: {err.strerror}", path) from None
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable_dir(path):
    """Fail early (before hours of work) when an output directory cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the directory: {err.strerror}", path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError("the directory is not writable", path)


@contextlib.contextmanager
def located_errors(path):
    """'missing', 'a directory' and 'unreadable' as located errors of `path`, for reading."""
    try:
        yield
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except IsADirectoryError:
        raise InputError("expected a file, found a directory", path) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", path) from None


def open_input(path):
    """Open a UTF-8 text input, turning 'missing' and 'unreadable' into located errors."""
    with located_errors(path):
        return open(path, encoding="utf-8")


def read_bytes(path):
    with located_errors(path), open(path, "rb") as handle:
        return handle.read()


def write_figure(figure, path):
    """A matplotlib figure as a PNG at `path`, written atomically; the figure is closed."""
    import io

    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    with atomic_output(path, "wb") as handle:
        handle.write(buffer.getvalue())


def read_lines(path):
    """Yield (line_number, text) of a UTF-8 file; bytes that are not UTF-8 give an error naming their line.

    Lines are decoded one by one (a text-mode file decodes in chunks and would blame an earlier line).
    """
    with open_input(path) as text_handle:
        handle = text_handle.buffer
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start} of the line)", path,
                                 number) from None
            yield number, text.replace("\r\n", "\n")


def read_jsonl(path, required=()):
    """Yield (line_number, object) of a JSON-lines file; each object must be a dict holding `required` keys."""
    for number, text in read_lines(path):
        if not text.strip():
            raise InputError("empty line; expected one JSON object per line", path, number)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"not valid JSON ({err.msg}); expected one JSON object per line", path, number) from None
        if not isinstance(obj, dict):
            raise InputError(f"expected a JSON object, found {type(obj).__name__}", path, number)
        missing = [key for key in required if key not in obj]
        if missing:
            raise InputError(f"missing key(s) {', '.join(map(repr, missing))}", path, number)
        yield number, obj
