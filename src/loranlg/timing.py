"""Where a run's time goes (gpt2_beam.py --timing): a table on stderr of named parts, in order of first use.

Each interval between two marks is added to the name of the mark that ends it, so the rows add up to the
run. `phase` marks start-up and output: it first waits for the device, so that work the host has only
queued is counted where it was asked for. `lap` marks the search's steps without waiting: on a GPU it
records a CUDA event, read once at the end, so the host runs ahead of the GPU as it does without --timing;
the table then gives both the host's seconds (issuing work, or waiting) and the GPU's (between the events).

Importing this module does not import torch (gpt2_beam.py's --help answers at once).
"""

import os
import sys
import time


def seconds_since_process_start():
    """How long this process has run (Linux: /proc; 10 ms resolution), or None where that is unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat, open("/proc/uptime", encoding="ascii") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Timeline:
    def __init__(self):
        self.rows = {}  # name -> [host seconds, GPU seconds, count]
        before = seconds_since_process_start()
        if before is not None:
            self.rows["python start-up (before main)"] = [before, None, 1]
        self.last = time.perf_counter()
        self.cuda = False
        self.last_event = None
        self.events = []  # (name, start event, end event), read in report()

    def use_device(self, device):
        """From here on the device is waited for (phase) and timed with events (lap) when it is a GPU."""
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.last_event = self.record()

    def record(self):
        import torch
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, name):
        now = time.perf_counter()
        row = self.rows.setdefault(name, [0.0, None, 0])
        row[0] += now - self.last
        row[2] += 1
        self.last = now

    def phase(self, name):
        """The time since the last mark, once the device has done what was queued, goes to `name`."""
        if self.cuda:
            import torch
            torch.cuda.synchronize()
        self.add(name)
        if self.cuda:
            self.last_event = self.record()

    def lap(self, name):
        """The time since the last mark goes to `name`, the host's now and the GPU's (events) at report()."""
        self.add(name)
        if self.cuda:
            event = self.record()
            self.events.append((name, self.last_event, event))
            self.last_event = event

    def report(self, stream=None):
        """The table, on stderr: seconds per part, the GPU's where the search timed it, and the count."""
        if self.events:
            import torch
            torch.cuda.synchronize()
            for name, start, end in self.events:
                row = self.rows[name]
                row[1] = (row[1] or 0.0) + start.elapsed_time(end) / 1000
        stream = stream or sys.stderr
        print(f"timing: {'part':<36} {'host s':>8} {'GPU s':>8} {'count':>6}", file=stream)
        for name, (host, gpu, count) in self.rows.items():
            shown = "-" if gpu is None else f"{gpu:.3f}"
            print(f"timing: {name:<36} {host:8.3f} {shown:>8} {count:6d}", file=stream)
        total = sum(row[0] for row in self.rows.values())
        print(f"timing: {'total':<36} {total:8.3f} {'-':>8} {1:6d}", file=stream)


class NoTimeline:
    """What the run uses without --timing: marks cost nothing."""

    def use_device(self, device):
        pass

    def phase(self, name):
        pass

    def lap(self, name):
        pass

    def report(self, stream=None):
        pass
