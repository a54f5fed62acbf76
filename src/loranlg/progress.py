"""Progress on stderr, for training, beam search and downloads: on a terminal, one bar redrawn in place (the
`progress` package's Bar, our text after it); elsewhere (a log file) a line every `every_seconds`, or every
tenth of the total, or none. The `progress` package draws nothing but on a terminal, hence the log lines here."""

import sys
import time


class Progress:
    """`text(progress)` makes the line from done, total, rate() and seconds_left()."""

    def __init__(self, total, text, done=0, enabled=True, every_seconds=None, every_tenth=False, stream=None):
        self.total, self.text, self.done = total, text, done
        self.enabled = enabled
        self.every_seconds, self.every_tenth = every_seconds, every_tenth
        self.stream = stream or sys.stderr  # the current stderr, not the one seen at import
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last_line = time.monotonic()
        self.started_at = done
        self.last_draw = 0.0
        self.drawn = 0  # characters on the terminal's current line
        self.bar = None  # progress.bar.Bar, made at the first draw
        self.last_tenth = -1

    def rate(self):
        """Units per second since the start."""
        return (self.done - self.started_at) / max(time.monotonic() - self.start, 1e-9)

    def seconds_left(self):
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 and self.total else 0.0

    def advance(self, count=1):
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.2 or self.done == self.total:
                self.last_draw = now
                self._draw()
        elif self.every_tenth and self.total:
            tenth = int(10 * self.done / self.total)
            if tenth != self.last_tenth:
                self.last_tenth = tenth
                self._line()
        elif self.every_seconds is not None and (now - self.last_line >= self.every_seconds
                                                 or self.done == self.total):
            self.last_line = now
            self._line()

    def clear(self):
        """Before other output on the terminal; the next draw starts a fresh line."""
        if self.tty and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0
            self.bar = None

    def finish(self):
        if self.tty:
            self._draw()
            self.bar.finish()
            self.drawn = 0
            self.bar = None

    def _draw(self):
        if self.bar is None:
            from progress.bar import Bar
            # hide_cursor off: a run stopped with Ctrl-C would leave the terminal without one.
            self.bar = Bar(file=self.stream, max=max(self.total or 0, 1), width=20, hide_cursor=False)
        self.bar.suffix = " " + self.text(self).replace("%", "%%")
        self.bar.goto(min(self.done, self.bar.max))
        self.drawn = max(self.drawn, self.bar._max_width)  # what clear() has to blank

    def _line(self):
        self.stream.write(self.text(self) + "\n")
        self.stream.flush()
