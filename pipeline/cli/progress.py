"""Progress on stderr: a bar on a terminal, plain lines in a pipe, nothing with -q or --json.

The pipeline reports progress as log lines (``log(str)``); this module is the one
place that renders them. On a terminal every line is still printed, and below them
one bar line is redrawn for the long loops the pipeline announces:

* training epochs: ``[<stage>] epoch i/N ...`` (``pipeline.train.fit``);
* the device matrix: ``[devices] K run(s) on emulated ARM ...`` then one
  ``[device/<device>/<variant>] ...`` per finished run (``pipeline.build.matrix``);
* search trials: ``[search] ... T trial(s) ...`` then ``[search] trial n: ...``
  (``pipeline.search.study``).

``tests/test_progress.py`` pins these formats against the modules that write them.
"""

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Optional, Set, TextIO
from pipeline.errors import Log

EPOCH = re.compile(r"^\[(?P<label>[^\]/]+)\] epoch (?P<done>\d+)/(?P<total>\d+)\b")
DEVICES_START = re.compile(r"^\[devices\] (?P<total>\d+) run\(s\) on emulated ARM")
DEVICE_DONE = re.compile(r"^\[device/(?P<device>[^/\]]+)/(?P<variant>[^\]]+)\] ")
SEARCH_START = re.compile(r"^\[search\] .*?(?P<total>\d+) trial\(s\)")
SEARCH_TRIAL = re.compile(r"^\[search\] trial (?P<number>\d+): ")
BAR_WIDTH = 24


@dataclass
class Bar:
    """One loop in progress: what it is, how far it is, when it started."""

    label: str
    total: int
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    seen: Set[str] = field(default_factory=set)

    def render(self, now: Optional[float] = None) -> str:
        """``label [#####-----] done/total  elapsed`` (no newline)."""
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(round(frac * BAR_WIDTH))
        elapsed = (time.monotonic() if now is None else now) - self.started
        return (f"{self.label} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] "
                f"{self.done}/{self.total}  {elapsed:.0f} s")


class TerminalProgress:
    """A log callable for a terminal: prints each line, keeps a bar drawn under them."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.bar: Optional[Bar] = None

    def __call__(self, msg: str) -> None:
        self._clear()
        self.stream.write(msg + "\n")
        self._update(msg)
        if self.bar is not None:
            if self.bar.done >= self.bar.total:
                self.stream.write(self.bar.render() + "\n")  # the finished bar stays, as a line
                self.bar = None
            else:
                self.stream.write(self.bar.render())
        self.stream.flush()

    def _clear(self) -> None:
        if self.bar is not None:
            self.stream.write("\r\x1b[K")

    def _update(self, msg: str) -> None:
        m = EPOCH.match(msg)
        if m:
            label, done, total = f"{m['label']} epochs", int(m["done"]), int(m["total"])
            if self.bar is None or self.bar.label != label or done == 1:
                self.bar = Bar(label, total)
            self.bar.done, self.bar.total = done, total
            return
        m = DEVICES_START.match(msg)
        if m:
            self.bar = Bar("device runs", int(m["total"]))
            return
        m = DEVICE_DONE.match(msg)
        if m and self.bar is not None and self.bar.label == "device runs":
            self.bar.seen.add(f"{m['device']}/{m['variant']}")
            self.bar.done = len(self.bar.seen)
            return
        m = SEARCH_START.match(msg)
        if m and not SEARCH_TRIAL.match(msg):
            self.bar = Bar("search trials", int(m["total"]))
            return
        m = SEARCH_TRIAL.match(msg)
        if m and self.bar is not None and self.bar.label == "search trials":
            self.bar.seen.add(m["number"])
            self.bar.done = len(self.bar.seen)


def progress_log(stream: Optional[TextIO] = None) -> Log:
    """The log callable of a command that is not quiet (``-q``/``--json`` print nothing:
    :func:`pipeline.cli.common.logger`).

    Args:
        stream: where to write (default: stderr at call time); a bar is drawn only
            when it is a terminal.
    """
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        return TerminalProgress(out)

    def plain(msg: str) -> None:
        out.write(msg + "\n")
        out.flush()

    return plain
