"""progress.py, the one progress line of training, beam search and downloads."""

import io

from loranlg.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def text(progress):
    return f"{progress.done}/{progress.total}"


def test_a_log_gets_a_line_every_tenth_or_at_the_end_of_an_interval():
    log = io.StringIO()
    progress = Progress(20, text, every_tenth=True, stream=log)
    for _ in range(20):
        progress.advance()
    assert log.getvalue().splitlines() == ["1/20"] + [f"{n}/20" for n in range(2, 21, 2)]  # the first, each tenth
    log = io.StringIO()
    progress = Progress(3, text, every_seconds=3600, stream=log)
    for _ in range(3):
        progress.advance()
    progress.finish()
    assert log.getvalue() == "3/3\n"  # only the last: the interval never passed


def test_a_terminal_gets_one_bar_redrawn_and_cleared_before_other_output():
    screen = Terminal()
    progress = Progress(100, text, done=40, stream=screen)
    progress.advance()
    drawn = screen.getvalue().split("\r")[-1]
    assert drawn == " |" + "#" * 8 + " " * 12 + "|  41/100"  # the progress package's Bar: 41% of 20 cells, our text
    progress.clear()
    assert screen.getvalue().endswith("\r" + " " * len(drawn) + "\r")
    progress.advance(59)
    progress.finish()
    assert screen.getvalue().endswith("\r |" + "#" * 20 + "|  100/100\n")


def test_disabled_writes_nothing_and_rates_count_from_the_start():
    screen = Terminal()
    progress = Progress(10, text, done=4, enabled=False, stream=screen)
    progress.advance(3)
    progress.finish()
    assert screen.getvalue() == "" and progress.done == 7 and progress.rate() > 0
