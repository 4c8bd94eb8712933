"""Streaming generation: each prompt's new text, one token at a time, as the tokens are sampled.

The events carry text deltas whose concatenation (per prompt) is exactly what the non-streaming
call returns: `text_completion(...)[i]["generation"]`, or the chat answer's content. Prompts
beyond max_batch_size are run in later batches, so their events come after the earlier ones.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, DefaultDict, Iterable, Iterator, List, Optional, Sequence, Union

from .chat_format import UNSAFE_ERROR, Dialog
from .decoding.batch_rows import BatchRows, RowEvent
from .decoding.batches import Timings
from .decoding.sampler import SamplingParams
from .generation import Llama
from .validation import stop_list


@dataclass(frozen=True)
class StreamEvent:
    index: int  # which prompt, in input order
    token: Optional[int]  # the token just generated; None on the closing event
    text: str  # text this event adds ("" while a multi-byte character or a possible stop string is held back)
    done: bool = False  # the prompt's last event: its generation is complete
    logprob: Optional[float] = None  # with logprobs=True: the token's log-probability, as text_completion's


def stream_generate(
    generator: Llama,
    prompt_tokens: List[List[int]],
    max_gen_len: int,
    temperature: float = 0.6,
    top_p: float = 0.9,
    logprobs: bool = False,
    *,
    stop: Union[None, str, Sequence[str]] = None,
    **sampling: Any,
) -> Iterator[StreamEvent]:
    """Llama.generate as a stream, for any number of prompts (batches of max_batch_size).

    sampling: top_k, repetition_penalty, frequency_penalty, presence_penalty, as generate takes them;
    stop: as text_completion's (the stop text is never given out). Arguments are checked here, before
    the first event is asked for. Once the stream is over, generator.last_timings holds its timings.
    """
    params = SamplingParams(temperature, top_p, **sampling)
    stops = stop_list(stop)
    generator.check_request(prompt_tokens, params, max_gen_len)
    size = generator.model.params.max_batch_size
    batches = [prompt_tokens[start : start + size] for start in range(0, len(prompt_tokens), size)]
    timings = generator.last_timings = Timings()
    return (
        event
        for k, batch in enumerate(batches)
        for event in _stream_batch(generator, batch, k * size, max_gen_len, params, logprobs, stops, timings)
    )


def _stream_batch(generator: Llama, batch, offset: int, max_gen_len: int, params, logprobs, stops, timings):
    started, first = time.perf_counter(), None
    state, steps = generator.decode(batch, max_gen_len, params, logprobs)
    rows = BatchRows(state, batch, max_gen_len, generator.stop_tokens, generator.tokenizer, stops)
    yield from (_event(e, offset) for e in rows.opening())
    for cur_pos in steps:
        first = time.perf_counter() if first is None else first
        yield from (_event(e, offset) for e in rows.step(cur_pos))
    closing = rows.closing()  # defensive: every row normally closes in the loop
    timings.add_batch(batch, started, first, sum(rows.kept))
    yield from (_event(e, offset) for e in closing)


def _event(e: RowEvent, offset: int) -> StreamEvent:
    return StreamEvent(offset + e.row, e.token, e.text, e.done, e.logprob)


def stream_text_completion(
    generator: Llama,
    prompts: List[str],
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_gen_len: Optional[int] = None,
    logprobs: bool = False,
    **options: Any,
) -> Iterator[StreamEvent]:
    """Llama.text_completion as a stream of StreamEvent; options: stop, top_k and the penalties."""
    prompt_tokens, max_gen_len = generator.encode_prompts(prompts, max_gen_len)
    return stream_generate(generator, prompt_tokens, max_gen_len, temperature, top_p, logprobs, **options)


def stream_chat_completion(
    generator: Llama,
    dialogs: List[Dialog],
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_gen_len: Optional[int] = None,
    logprobs: bool = False,
    **options: Any,
) -> Iterator[StreamEvent]:
    """Llama.chat_completion as a stream; a dialog with special tags streams only its error text."""
    prompt_tokens, max_gen_len = generator.encode_dialogs(dialogs, max_gen_len)
    unsafe = [generator.unsafe(d) for d in dialogs]
    events = stream_generate(generator, prompt_tokens, max_gen_len, temperature, top_p, logprobs, **options)
    return _replace_unsafe(events, unsafe)


def _replace_unsafe(events: Iterator[StreamEvent], unsafe: List[bool]) -> Iterator[StreamEvent]:
    for event in events:
        if unsafe[event.index]:
            event = replace(event, text=UNSAFE_ERROR if event.done else "")
        yield event


def in_prompt_order(events: Iterable[StreamEvent]) -> Iterator[StreamEvent]:
    """The same events regrouped prompt by prompt, in input order, for printing one answer at a time.

    The current prompt's events pass straight through; later prompts' events wait until it is done.
    """
    waiting: DefaultDict[int, List[StreamEvent]] = defaultdict(list)
    current = 0
    for event in events:
        waiting[event.index].append(event)
        while waiting[current]:
            finished = waiting[current][-1].done
            yield from waiting.pop(current)
            if not finished:
                break
            current += 1
