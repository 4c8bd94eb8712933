"""Streaming generation: each prompt's new text, one token at a time, as the tokens are sampled.

The events carry text deltas whose concatenation (per prompt) is exactly what the non-streaming
call returns: `text_completion(...)[i]["generation"]`, or the chat answer's content. Prompts
beyond max_batch_size are run in later batches, so their events come after the earlier ones.
"""

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import DefaultDict, Iterable, Iterator, List, Optional

from .chat_format import UNSAFE_ERROR, Dialog
from .decoding.detokenize import TextDeltas
from .generation import Llama


@dataclass(frozen=True)
class StreamEvent:
    index: int  # which prompt, in input order
    token: Optional[int]  # the token just generated; None on the closing event
    text: str  # text this event adds ("" while a multi-byte character is still incomplete)
    done: bool = False  # the prompt's last event: its generation is complete


def stream_generate(
    generator: Llama,
    prompt_tokens: List[List[int]],
    max_gen_len: int,
    temperature: float = 0.6,
    top_p: float = 0.9,
) -> Iterator[StreamEvent]:
    """Llama.generate as a stream, for any number of prompts (batches of max_batch_size).

    Arguments are checked here, before the first event is asked for.
    """
    generator.check_request(prompt_tokens, temperature, top_p, max_gen_len)
    size = generator.model.params.max_batch_size
    batches = [prompt_tokens[start : start + size] for start in range(0, len(prompt_tokens), size)]
    return (
        event
        for k, batch in enumerate(batches)
        for event in _stream_batch(generator, batch, k * size, max_gen_len, temperature, top_p)
    )


def _stream_batch(generator: Llama, batch, offset: int, max_gen_len: int, temperature: float, top_p: float):
    state, steps = generator.decode(batch, max_gen_len, temperature, top_p)
    stops = set(generator.stop_tokens)
    ends = [min(len(p) + max_gen_len, state.total_len) for p in batch]  # first position past each generation
    decoders = [TextDeltas(generator.tokenizer) for _ in batch]
    done = [len(p) >= end for p, end in zip(batch, ends)]
    for i in (i for i, d in enumerate(done) if d):
        yield StreamEvent(offset + i, None, "", done=True)
    for cur_pos in steps:
        column = state.tokens[:, cur_pos].tolist()
        for i, token in enumerate(column):
            if done[i] or cur_pos < len(batch[i]):
                continue
            if token not in stops:
                yield StreamEvent(offset + i, token, decoders[i].push(token))
            if token in stops or cur_pos + 1 >= ends[i]:
                done[i] = True
                yield StreamEvent(offset + i, None, decoders[i].flush(), done=True)
    for i in (i for i, d in enumerate(done) if not d):  # defensive: every row normally closes in the loop
        yield StreamEvent(offset + i, None, decoders[i].flush(), done=True)


def stream_text_completion(
    generator: Llama,
    prompts: List[str],
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_gen_len: Optional[int] = None,
) -> Iterator[StreamEvent]:
    """Llama.text_completion as a stream of StreamEvent."""
    prompt_tokens, max_gen_len = generator.encode_prompts(prompts, max_gen_len)
    return stream_generate(generator, prompt_tokens, max_gen_len, temperature, top_p)


def stream_chat_completion(
    generator: Llama,
    dialogs: List[Dialog],
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_gen_len: Optional[int] = None,
) -> Iterator[StreamEvent]:
    """Llama.chat_completion as a stream; a dialog with special tags streams only its error text."""
    prompt_tokens, max_gen_len = generator.encode_dialogs(dialogs, max_gen_len)
    unsafe = [generator.unsafe(d) for d in dialogs]
    return _replace_unsafe(stream_generate(generator, prompt_tokens, max_gen_len, temperature, top_p), unsafe)


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
