"""Progress output for every long step: a tqdm bar on a terminal, one plain line at a time otherwise.

A bar redraws itself with carriage returns; written into a log file (``ablate``'s run logs, CI, a
notebook cell, ``nohup``) that is megabytes of redraws nobody can read. So :func:`progress` returns
tqdm only when its stream is a terminal, and otherwise a :class:`LineProgress`, which has the small
part of tqdm's interface the package uses (iteration, ``update``, ``set_postfix``, ``close``, context
manager) and prints a complete line now and then::

    fit: 30/300 steps (10%), loss 0.1234, 0:45 elapsed, ETA 6:45

at most every ``every_seconds`` (default 30 s) or every ``every_n`` units, and a last line when it
closes. Use it instead of tqdm everywhere (``enabled=False`` silences both).
"""
from __future__ import annotations

import sys
import threading
import time

EVERY_SECONDS = 30.0

_SAY_LOCK = threading.Lock()


def say(text: str, file=None) -> None:
    """Print ``text`` as one whole line (one write, then flush). Why not print(): it writes the text
    and the newline separately, so lines from `ablate --jobs 2`'s threads ran into each other."""
    stream = file or sys.stdout
    with _SAY_LOCK:
        stream.write(f"{text}\n")
        stream.flush()


def on_terminal(stream=None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``, where tqdm writes) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def clock(seconds: float) -> str:
    """``M:SS`` or ``H:MM:SS``."""
    s = int(round(max(0.0, seconds)))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 or abs(x) >= 100 else f"{x:.1f}"


class LineProgress:
    """tqdm's interface printing whole lines (see the module docstring).

    Args:
        iterable: iterate over it (``total`` defaults to its length).
        total: units expected (None: unknown, no percentage or ETA).
        desc: what is being done, the start of every line.
        unit: the unit's name, e.g. "steps", "songs", "s audio".
        every_seconds: the longest gap between two lines while running.
        every_n: also print a line every this many units (None: time only).
        leave: print a final line when closing even if nothing was printed before; with False the
            final line is printed only when progress lines were (a short step stays silent).
        file: stream (default ``sys.stderr``).
        enabled: False prints nothing.
    """

    def __init__(self, iterable=None, total: float | None = None, desc: str = "", unit: str = "it",
                 every_seconds: float = EVERY_SECONDS, every_n: float | None = None, leave: bool = True,
                 file=None, enabled: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc, unit
        self.every_seconds, self.every_n, self.leave = float(every_seconds), every_n, leave
        self.file, self.enabled = file, enabled
        self.n = 0.0
        self.postfix = ""
        self.start = self._last_time = time.monotonic()
        self._last_n = 0.0
        self._printed = False
        self._closed = False

    def line(self) -> str:
        """The current progress as one line (no newline)."""
        elapsed = time.monotonic() - self.start
        parts = [f"{_num(self.n)}/{_num(self.total)} {self.unit}" if self.total else f"{_num(self.n)} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        if self.postfix:
            parts.append(self.postfix)
        parts.append(f"{clock(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total:
            parts.append(f"ETA {clock(elapsed / self.n * (self.total - self.n))}")
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _emit(self) -> None:
        if not self.enabled:
            return
        say(self.line(), self.file or sys.stderr)
        self._printed = True
        self._last_time, self._last_n = time.monotonic(), self.n

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        due_n = self.every_n is not None and self.n - self._last_n >= self.every_n
        if (due_n or now - self._last_time >= self.every_seconds) and not (self.total and self.n >= self.total):
            self._emit()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        if self.enabled:
            say(text, self.file or sys.stderr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave or self._printed:
            self._emit()

    def __iter__(self):
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable=None, *, total: float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
             leave: bool = True, every_seconds: float = EVERY_SECONDS, every_n: float | None = None, file=None,
             **tqdm_kwargs):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress`.

    ``tqdm_kwargs`` (e.g. ``bar_format``) only apply to the bar; ``every_seconds`` / ``every_n``
    only to the lines.
    """
    stream = sys.stderr if file is None else file
    if on_terminal(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, file=stream,
                    **tqdm_kwargs)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, every_seconds=every_seconds, every_n=every_n,
                        leave=leave, file=stream, enabled=enabled)
