"""The rows of a batched decode (llama.decoding.loop) followed position by position as text: each new
token's text delta, where a row ends (a stop token, its last position, or a stop string: the row is
then marked finished, so that the loop ends once every row has), and how many tokens it kept.

What the streams (llama.streaming) and the stop strings of text_completion / chat_completion share.
The deltas of a row add up to tokenizer.decode of its kept tokens, cut before the first stop string
(llama.decoding.stops.StopText: no part of one is given out).
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .detokenize import TextDeltas
from .loop import DecodeState
from .stops import StopText


@dataclass(frozen=True)
class RowEvent:
    row: int  # index in the batch
    token: Optional[int]  # the token just generated; None on the row's closing event
    text: str  # text it adds ("" while held back: an incomplete character, or maybe a stop string)
    done: bool = False  # the row's last event
    logprob: Optional[float] = None  # the token's log-probability, where the decode computes them


class BatchRows:
    """Feed `step(cur_pos)` each position the loop yields; -> the events of the rows it advanced."""

    def __init__(
        self, state: DecodeState, batch: List[List[int]], max_gen_len: int, stop_tokens, tokenizer, stop: Sequence[str]
    ):
        self.state = state
        self.starts = [len(p) for p in batch]
        self.ends = [min(len(p) + max_gen_len, state.total_len) for p in batch]  # first position past each
        self.stop_tokens = set(stop_tokens)
        self.deltas = [TextDeltas(tokenizer) for _ in batch]
        self.stop_texts = [StopText(stop) for _ in batch]
        self.done = [start >= end for start, end in zip(self.starts, self.ends)]
        self.kept = [0] * len(batch)  # tokens generated and kept (a stop token is not)
        self.by_text = [False] * len(batch)  # ended by a stop string
        self.texts: List[List[str]] = [[] for _ in batch]

    def opening(self) -> List[RowEvent]:
        """The closing events of rows that have no room to generate at all."""
        return [RowEvent(i, None, "", done=True) for i, d in enumerate(self.done) if d]

    def step(self, cur_pos: int) -> List[RowEvent]:
        column = self.state.tokens[:, cur_pos].tolist()
        scores = self.state.token_logprobs
        logprobs = scores[:, cur_pos].tolist() if scores is not None else None
        events: List[RowEvent] = []
        for i, token in enumerate(column):
            if self.done[i] or cur_pos < self.starts[i]:
                continue
            if token in self.stop_tokens:
                events.append(self._close(i))
                continue
            self.kept[i] += 1
            text, stopped = self.stop_texts[i].push(self.deltas[i].push(token))
            events.append(self._event(RowEvent(i, token, text, logprob=None if logprobs is None else logprobs[i])))
            if stopped:
                events.append(self._closed_by_text(i))
            elif cur_pos + 1 >= self.ends[i]:
                events.append(self._close(i))
        return events

    def closing(self) -> List[RowEvent]:
        """Close the rows still open once the loop is over (defensive: each normally closes in step)."""
        return [self._close(i) for i, d in enumerate(self.done) if not d]

    def text(self, i: int) -> str:
        """Row i's text so far (all of it once the row is done)."""
        return "".join(self.texts[i])

    def _event(self, event: RowEvent) -> RowEvent:
        self.texts[event.row].append(event.text)
        return event

    def _close(self, i: int) -> RowEvent:
        rest, stopped = self.stop_texts[i].push(self.deltas[i].flush())
        if stopped:
            return self._closed_by_text(i, rest)
        self.done[i] = True
        return self._event(RowEvent(i, None, rest + self.stop_texts[i].flush(), done=True))

    def _closed_by_text(self, i: int, rest: str = "") -> RowEvent:
        self.done[i] = self.by_text[i] = True
        self.state.finished[i] = True  # the loop may end before the row's last position
        return self._event(RowEvent(i, None, rest, done=True))
