"""Progress for slow steps only (loading, quantizing, converting, resharding), shown by rank 0 once a
step has run for DELAY_S.

On a terminal a bar is drawn on stderr and redrawn while the step runs (also during one long
call, such as writing a shard), then erased. Where stderr is not a terminal (a log file, a pipe)
the step gets one whole line instead, `<what it does> ...`, written once it has run for DELAY_S
(whole, so that log lines written during the step never land inside it). Steps that end sooner
print nothing; stdout is never touched.
"""

import shutil
import sys
import threading
import time
from typing import Iterable, Iterator, Optional, TextIO

from tqdm import tqdm

from .group import is_main_process

DELAY_S = 1.0  # fast loads (tests, the demo) stay silent
REDRAW_S = 0.25  # how often a terminal's bar is redrawn


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """One slow step: `with Progress("Loading weights", total, "tensor") as bar: ... bar.update()`.

    `total` may be set later (bar.total = n) when it is known only once the step has begun.
    enabled None: only where this process speaks for all (rank 0, `llama.runtime.group`).
    """

    def __init__(self, desc: str, total: Optional[int] = None, unit: str = "it", enabled: Optional[bool] = None):
        self.desc, self.total, self.unit, self.n = desc, total, unit, 0
        self.enabled = is_main_process() if enabled is None else enabled
        self.stream = sys.stderr
        self.terminal = _is_terminal(self.stream)
        self._start = time.monotonic()
        self._shown = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Progress":
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._watch, name="progress", daemon=True)
            self._thread.start()
        return self

    def update(self, n: int = 1) -> None:
        self.n += n

    def __exit__(self, exc_type, *exc) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        if not self.enabled:
            return
        with self._lock:
            late = not self._shown and not self.terminal and exc_type is None
            if late and time.monotonic() - self._start >= DELAY_S:
                self._show()  # a step as slow as DELAY_S gets its note even if the watcher was late
            if self._shown and self.terminal:
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def _watch(self) -> None:
        if self._done.wait(max(DELAY_S - (time.monotonic() - self._start), 0)):
            return
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                self._show()
            if not self.terminal or self._done.wait(REDRAW_S):
                return

    def _show(self) -> None:
        """Draw the bar (a terminal) or write the note (once); the caller holds the lock."""
        if self.terminal:
            width = shutil.get_terminal_size().columns
            meter = tqdm.format_meter(
                self.n, self.total, time.monotonic() - self._start, ncols=width - 1, prefix=self.desc, unit=self.unit
            )
            self.stream.write(f"\r{meter}\x1b[K")
        elif not self._shown:
            self.stream.write(f"{self.desc} ...\n")
        self.stream.flush()
        self._shown = True


def slow_progress(
    iterable: Iterable, total: Optional[int], desc: str, unit: str = "it", enabled: Optional[bool] = None
) -> Iterator:
    """`iterable`'s items, counted by a Progress that is closed when they run out."""
    with Progress(desc, total, unit, enabled) as bar:
        for item in iterable:
            yield item
            bar.update()
