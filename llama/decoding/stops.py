"""Stop strings in streamed text: the answer ends before the first stop string, and no part of one is
ever given out (text that may be the start of a stop string is held back until it cannot be)."""

from typing import Sequence, Tuple


class StopText:
    """Feed text deltas; get back the text that is safe to give out, and whether a stop string ended it."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""  # received, not yet given out: it may begin a stop string
        self.stopped = False

    def push(self, delta: str) -> Tuple[str, bool]:
        """-> (text to give out now, whether a stop string is complete: the answer ends here)."""
        if self.stopped:
            return "", True
        text = self.pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending, self.stopped = "", True
            return text[: min(hits)], True
        hold = max((_overlap(text, s) for s in self.stops), default=0)
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """What is held back, once the answer ended for another reason (no stop string can complete)."""
        rest, self.pending = self.pending, ""
        return "" if self.stopped else rest


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `stop`."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
