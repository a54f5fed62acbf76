"""Reading and writing the pipeline's files: JSON lines with located errors, outputs written atomically."""

import contextlib
import errno
import json
import os
import re
import socket
import tempfile

from .errors import DiskFull, InputError


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
TEMP_PREFIX = ".tmp-"
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


@contextlib.contextmanager
def atomic_output(path, mode="w", encoding="utf-8"):
    """Write to a temporary file beside `path`; rename it into place only if the block succeeds.

    A crash or an exception never leaves a partial file under the final name. The temporary file's name
    carries this host and process, so the next writer of `path` removes what a killed writer left. A full
    disk is a DiskFull error naming `path`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError("is a directory; give a file name for this output", path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f"{TEMP_PREFIX}{os.path.basename(path)}."
    try:
        make_dirs(directory, "cannot write here", path)
        remove_stale_temporaries(directory, prefix)
        fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{_HOST}.{os.getpid()}.", dir=directory)
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes it 0600; give it a normal file's mode
    except OSError as err:
        if is_disk_full(err):
            raise DiskFull(path) from None
        raise InputError(f"cannot write here: {err.strerror}", path) from None
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_disk_full(err):
            raise DiskFull(path) from None
        if isinstance(err, IsADirectoryError):  # a directory appeared under the name while we wrote
            raise InputError("is a directory; give a file name for this output", path) from None
        raise


def remove_stale_temporaries(directory, prefix):
    """Delete `prefix`HOST.PID.* files of this host whose process is gone (a writer killed mid-way)."""
    for name in os.listdir(directory):
        if not name.startswith(prefix):
            continue
        fields = name[len(prefix):].split(".")
        if len(fields) >= 3 and fields[0] == _HOST and fields[1].isdigit() and not process_alive(int(fields[1])):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_disk_full(err):
    """Whether `err`, or an error it arose from, is 'no space left on device' (or 'quota exceeded'); torch.save
    reports a full disk as a RuntimeError ('unexpected pos ...') raised while handling the OSError."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return True
        err = err.__cause__ or err.__context__
    return False


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dirs(path, failing="cannot create the directory", named=None):
    """os.makedirs, with a clear error naming `named` (default: path) when a parent is a file (instead of
    'File exists' / 'Not a directory')."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        parent = os.path.abspath(path)
        while parent != os.path.dirname(parent) and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        raise InputError(f"{failing}: {parent} is a file, not a directory", named or path) from None


def check_writable_dir(path):
    """Fail early (before hours of work) when an output directory cannot be created or written."""
    try:
        make_dirs(path)
    except OSError as err:
        raise InputError(f"cannot create the directory: {err.strerror}", path) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError("the directory is not writable", path)


@contextlib.contextmanager
def output_dir(path):
    """check_writable_dir(path) for the block; when the block fails and the directory was made for it, it is
    removed again if still empty (a refused run leaves nothing behind)."""
    existed = os.path.isdir(path)
    check_writable_dir(path)
    try:
        yield path
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only an empty directory goes
        raise


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
