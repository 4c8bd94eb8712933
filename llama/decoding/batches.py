"""Prompts run through the decode loop (llama.decoding.loop) one batch at a time, as `Llama.generate`,
`text_completion` and `chat_completion` run them: each row cut at its first stop token (and, with
stop strings, after the token that completed the first one: llama.decoding.batch_rows), the stop
token that ended it, and the call's timings (prompt and generation apart)."""

import time
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from .batch_rows import BatchRows
from .loop import DecodeState, collect, first_stop

# batch of prompt token lists -> its decode state and the lazy loop that fills it
Decode = Callable[[List[List[int]]], Tuple[DecodeState, Iterator[int]]]


@dataclass
class Row:
    tokens: List[int]  # the generation (with echo: prompt and generation), without the stop token
    logprobs: Optional[List[float]]
    stop_token: Optional[int]  # the stop token that ended it (None: it did not end on one)
    text: Optional[str] = None  # with stop strings: the generation's text, cut before the first one
    by_text: bool = False  # a stop string ended it


@dataclass
class Timings:
    """How long the prompts and the generation took in one call (Llama.last_timings).

    prompt_s: from the start of each batch to its first sampled token (the prompt's forward pass);
    generation_s: the rest of each batch's loop. generated_tokens: the tokens returned (no stop
    tokens), as the streams give them out.
    """

    prompt_tokens: int = 0
    prompt_s: float = 0.0
    generated_tokens: int = 0
    generation_s: float = 0.0

    @property
    def prompt_rate(self) -> float:
        """Prompt tokens per second, to the first token."""
        return self.prompt_tokens / max(self.prompt_s, 1e-9)

    @property
    def generation_rate(self) -> float:
        """Generated tokens per second after the first token."""
        return max(self.generated_tokens - 1, 0) / max(self.generation_s, 1e-9)

    def add(self, other: "Timings") -> None:
        for name in ("prompt_tokens", "prompt_s", "generated_tokens", "generation_s"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add_batch(self, batch: List[List[int]], started: float, first: Optional[float], generated: int) -> None:
        """One batch's share: prompt lengths, start, first token time (None: no step ran), tokens kept."""
        ended = time.perf_counter()
        first = ended if first is None else first
        self.prompt_tokens += sum(len(p) for p in batch)
        self.prompt_s += first - started
        self.generation_s += ended - first
        self.generated_tokens += generated


def run_batch(
    decode: Decode,
    batch: List[List[int]],
    max_gen_len: int,
    stop_tokens: Sequence[int],
    timings: Timings,
    echo: bool = False,
    stop: Sequence[str] = (),
    tokenizer=None,
) -> List[Row]:
    """Decode one batch (at most max_batch_size prompts); -> its rows, in order, and its share of
    `timings`. stop: stop strings (not with echo; the rows are then followed as text, by `tokenizer`)."""
    started = time.perf_counter()
    state, steps = decode(batch)
    rows = BatchRows(state, batch, max_gen_len, stop_tokens, tokenizer, stop) if stop else None
    first: Optional[float] = None
    for cur_pos in steps:
        first = time.perf_counter() if first is None else first
        if rows is not None:
            rows.step(cur_pos)
    tokens, probs = collect(state, batch, max_gen_len, [], echo)  # uncut
    out: List[Row] = []
    for i, row in enumerate(tokens):
        cut = first_stop(row, stop_tokens)
        end_token = row[cut] if cut < len(row) else None
        text, by_text = (rows.text(i), rows.by_text[i]) if rows is not None else (None, False)
        if by_text and rows is not None:
            cut, end_token = rows.kept[i], None
        out.append(Row(row[:cut], probs[i][:cut] if probs is not None else None, end_token, text, by_text))
    generated = sum(max(len(r.tokens) - (len(p) if echo else 0), 0) for r, p in zip(out, batch))
    timings.add_batch(batch, started, first, generated)
    return out
