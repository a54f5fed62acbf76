"""model.{step}.pt and resume.pt written beside the training instead of in its way.

A save used to hold the training up while rank 0 read the tensors back one at a time (checksum, pickling)
and wrote both files. Now the training only waits for a copy of the tensors: on a GPU an asynchronous copy of
each into pinned host memory, queued on the training's stream, so that it is done before the next step
(queued after it) changes a weight; on the CPU a clone. A thread of its own then seals each file
(file_record: the settings, the checksum) and writes it through files.atomic_output: the files the
synchronous code wrote (tests/test_checkpoint_writer.py).

One save at a time: the next save, and the end of the run, first wait for the files under way, and a write
that failed is raised there as a RunError naming its file. A save's files are written in order and a failure
skips the rest, so a resume.pt is never written without the model file of its step.
"""

import threading

import torch

from . import file_record
from .checkpoint import first_line, write_torch
from .errors import InputError, RunError


class CheckpointWriter:
    def __init__(self):
        self.thread = None
        self.failure = None

    def save(self, files, config, on_written=lambda path: None):
        """files: [(path, content)], each content a nest of dicts, lists and tuples holding tensors (on any
        device, the live ones) and plain values, written as file_record.sealed(content, config); on_written(path)
        once a file is in place. Returns when the tensors are copied; the writing goes on in the background."""
        self.wait()
        if not files:
            return
        copies, ready = host_copy([content for _, content in files])
        paths = [path for path, _ in files]
        self.thread = threading.Thread(target=self._write, args=(paths, copies, ready, config, on_written),
                                       name="checkpoint-writer")
        self.thread.start()

    def wait(self, raise_failure=True):
        """Until the files under way are written. Their failure is raised, or with raise_failure=False dropped
        (another error is already on its way)."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        failure, self.failure = self.failure, None
        if failure is not None and raise_failure:
            raise failure

    def _write(self, paths, contents, ready, config, on_written):
        path = paths[0]
        try:
            ready()
            for path, content in zip(paths, contents):
                write_torch(file_record.sealed(content, config), path)
                on_written(path)
        except Exception as err:  # noqa: BLE001 - raised in the training's thread at the next wait
            self.failure = as_run_error(err, path)


def as_run_error(err, path):
    """A failed write as the RunError the training reports: a full disk (DiskFull) as it is, atomic_output's
    'cannot write here: ...' with its words, anything else with its first line; all naming the file."""
    if isinstance(err, RunError):
        return err
    if isinstance(err, InputError):
        return RunError(err.message, err.path)
    reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
    return RunError(f"cannot write this file: {reason}", path)


def host_copy(nest):
    """(nest with every tensor replaced by a CPU copy of its own, a function that waits until the copies are
    done). Dicts, lists and tuples are rebuilt (an object met twice gives one copy, as pickling sees it); other
    values are kept. GPU tensors are copied into pinned memory without waiting, on the current stream."""
    copies, events = {}, {}

    def copy(obj):
        if id(obj) in copies:
            return copies[id(obj)]
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "cuda":
                out = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True)
                out.copy_(obj.detach(), non_blocking=True)
                events.setdefault(obj.device, None)
            else:
                out = obj.detach().clone()
        elif isinstance(obj, dict):
            out = type(obj)((key, copy(value)) for key, value in obj.items())
        elif type(obj) in (list, tuple):
            out = type(obj)(copy(item) for item in obj)
        else:
            out = obj
        copies[id(obj)] = out
        return out

    copied = copy(nest)
    for device in events:
        events[device] = torch.cuda.Event()
        events[device].record(torch.cuda.current_stream(device))

    def ready():
        for event in events.values():
            event.synchronize()

    return copied, ready
