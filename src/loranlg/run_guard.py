"""What keeps a training run safe around it: one run per work_dir (a lock), and Ctrl-C / SIGTERM turned into a
request that the loop honours between two steps (so it can save a resumable state and say how to go on).
"""

import contextlib
import fcntl
import os
import shlex
import signal
import sys

import torch

from .errors import InputError

LOCK_FILE = ".gpt2_ft.lock"


@contextlib.contextmanager
def work_dir_lock(work_dir, enabled=True):
    """Hold an exclusive lock on work_dir for the block; a second run on the same work_dir is refused.

    The lock is the kernel's (flock): it goes with its process, however that ends (even kill -9), so a lock
    file left by a dead run is simply taken over. The file names the holder's process id, for the message.
    """
    if not enabled:
        yield
        return
    path = os.path.join(work_dir, LOCK_FILE)
    fd = _lock(path, work_dir)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a run waiting on this file finds it gone and retries
        os.close(fd)


def _lock(path, work_dir):
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 100).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InputError(f"another training (process {holder}) is running in this work_dir; wait for it to "
                             "end, or give another --work_dir", work_dir) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that its holder removed between our open and our lock
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


class StopRequest:
    """Ctrl-C (SIGINT) and SIGTERM while the block runs: the first is remembered (`signum`) and the loop stops
    after its current step; a second one interrupts at once (KeyboardInterrupt)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave the signals alone
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save a resumable state "
              "(again to stop at once)", file=sys.stderr, flush=True)

    def agreed(self, ctx, step, every):
        """Whether to stop after `step`: at once with one process; with several, all ranks agree every `every`
        steps (an all-reduce; a signal may reach the ranks at different steps)."""
        if not ctx.distributed:
            return self.signum is not None
        if step % every:
            return False
        flag = torch.tensor([0.0 if self.signum is None else float(self.signum)], device=ctx.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


def resume_command(script, argv, world_size=1):
    """The command line that continues this run of `script`: the same flags plus --resume (launcher flags of
    torch.distributed.launch dropped)."""
    args = [a for a in argv if not a.startswith(("--local_rank", "--local-rank"))]
    if "--resume" not in args:
        args.append("--resume")
    script = os.path.relpath(script)
    launcher = [sys.executable] if world_size == 1 else ["torchrun", f"--nproc_per_node={world_size}"]
    return shlex.join(launcher + [script] + args)
