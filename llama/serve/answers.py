"""A Job's choices submitted to the engine, and their Completions turned into OpenAI's answers:
whole (`answer`) or streamed as server-sent events (`stream`)."""

import asyncio
import json
from typing import AsyncIterator, List, Optional, Tuple

from ..chat_format import UNSAFE_ERROR
from ..decoding.requests import Completion, RequestHandle, TokenEvent
from ..errors import BusyError, ConfigError, ContextMemoryError, EngineClosedError
from . import shapes
from .errors import APIError
from .prepare import Choice, Job
from .streams import ChoiceStream


def submit(job: Job, engine, loop: asyncio.AbstractEventLoop) -> List[RequestHandle]:
    """Every choice's request, or none: a full queue (429), a closed engine (503) or a request beyond
    the cache (400) cancels the rest."""
    handles: List[RequestHandle] = []
    try:
        for choice in job.choices:
            handles.append(engine.submit(choice.request, loop))
    except BusyError as exc:
        cancel(handles)
        raise APIError(429, str(exc), code="server_busy", type="server_error", headers={"Retry-After": "1"}) from None
    except EngineClosedError as exc:
        cancel(handles)
        raise APIError(503, str(exc), code="server_shutting_down", type="server_error") from None
    except ConfigError as exc:
        cancel(handles)
        raise APIError(400, str(exc), code="invalid_value") from None
    except ContextMemoryError as exc:  # more than the whole KV cache pool could ever hold
        cancel(handles)
        raise APIError(400, str(exc), code="context_length_exceeded") from None
    return handles


def cancel(handles: List[RequestHandle]) -> None:
    for handle in handles:
        handle.cancel()


async def completion_of(handle: RequestHandle) -> Completion:
    async for _ in handle.async_events():
        pass
    return handle.result(0)


def failed(completion: Completion) -> None:
    if completion.finish_reason == "error":
        raise APIError(500, f"generation failed: {completion.error}", code="generation_failed", type="server_error")


def _chat_choice(job: Job, choice: Choice, completion: Completion, tokenizer) -> dict:
    calls: List[dict] = []
    content: Optional[str] = UNSAFE_ERROR if choice.unsafe else completion.text
    if job.tools is not None and not choice.unsafe:
        content, calls = job.tools.answer(completion.text)
    logprobs = None
    if job.logprobs and completion.logprobs is not None:
        logprobs = shapes.chat_logprobs(tokenizer, completion.tokens, completion.logprobs, completion.top_logprobs)
    return {"index": choice.index, "message": shapes.chat_message(content, calls), "logprobs": logprobs,
            "finish_reason": shapes.finish_reason(completion, calls)}  # fmt: skip


def _text_choice(job: Job, choice: Choice, completion: Completion, tokenizer) -> dict:
    text = (choice.prompt_text if job.echo else "") + completion.text
    logprobs = None
    if job.logprobs:
        tokens = list(completion.tokens)
        lps: List[Optional[float]] = list(completion.logprobs or [])
        tops: List[Optional[List[Tuple[int, float]]]] = list(completion.top_logprobs or []) or [None] * len(tokens)
        if job.echo:
            tokens = list(choice.request.prompt_tokens) + tokens
            lps = list(completion.prompt_logprobs or []) + lps
            tops = list(completion.prompt_top_logprobs or [None] * len(choice.request.prompt_tokens)) + tops
        logprobs = shapes.text_logprobs(tokenizer, tokens, lps, tops)
    return {"index": choice.index, "text": text, "logprobs": logprobs,
            "finish_reason": shapes.finish_reason(completion, [])}  # fmt: skip


async def answer(job: Job, handles: List[RequestHandle], tokenizer, model: str) -> dict:
    """The whole answer, once every choice is done."""
    completions = list(await asyncio.gather(*(completion_of(h) for h in handles)))
    for completion in completions:
        failed(completion)
    build = _chat_choice if job.kind == "chat" else _text_choice
    choices = [build(job, c, comp, tokenizer) for c, comp in zip(job.choices, completions)]
    rid = shapes.new_id(job.kind)
    return shapes.envelope(job.kind, rid, shapes.now(), model, choices, usage=shapes.usage(job, completions))


async def _events_then_result(handle: RequestHandle) -> AsyncIterator[object]:
    """A handle's TokenEvents as they come, then its Completion."""
    async for event in handle.async_events():
        yield event
    yield handle.result(0)


async def _merged(handles: List[RequestHandle]) -> AsyncIterator[Tuple[int, object]]:
    """(choice position, TokenEvent or Completion) of every handle, as they come."""
    if len(handles) == 1:  # the common case: no queue and no task between the engine and the client
        async for item in _events_then_result(handles[0]):
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, handle: RequestHandle) -> None:
        async for item in _events_then_result(handle):
            await queue.put((k, item))

    tasks = [asyncio.ensure_future(pump(k, h)) for k, h in enumerate(handles)]
    finished = 0
    try:
        while finished < len(handles):
            item = await queue.get()
            finished += isinstance(item[1], Completion)
            yield item
    finally:
        for task in tasks:
            task.cancel()


def sse(data) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def stream(job: Job, handles: List[RequestHandle], tokenizer, model: str) -> AsyncIterator[str]:
    """Server-sent events: a chunk per text delta (no part of a stop string, whole characters), one with
    each choice's finish_reason, with include_usage a last one with the usage, then [DONE]."""
    rid, created = shapes.new_id(job.kind), shapes.now()
    kind = f"{job.kind}.chunk"
    extra = {"usage": None} if job.common.include_usage else {}
    streams = [ChoiceStream(job, c, tokenizer) for c in job.choices]
    completions: List[Optional[Completion]] = [None] * len(handles)
    try:
        for s in streams:
            for delta in s.opening():
                yield sse(shapes.envelope(kind, rid, created, model, [delta], **extra))
        async for k, item in _merged(handles):
            if isinstance(item, Completion):
                completions[k] = item
                if item.finish_reason == "error":
                    yield sse(APIError(500, f"generation failed: {item.error}", code="generation_failed",
                                       type="server_error").body())  # fmt: skip
                    continue
                deltas = streams[k].closing(item)
            elif isinstance(item, TokenEvent):
                deltas = streams[k].event(item)
            for delta in deltas:
                yield sse(shapes.envelope(kind, rid, created, model, [delta], **extra))
        if job.common.include_usage:
            done = [c for c in completions if c is not None]
            yield sse(shapes.envelope(kind, rid, created, model, [], usage=shapes.usage(job, done)))
        yield "data: [DONE]\n\n"
    finally:
        cancel(handles)  # a client that went away mid-stream frees its slots
