"""What callers hand the engine and get back: a Request, the stream of its tokens (TokenEvent), the
Completion it ends with, and the handle that connects them across threads (or an asyncio loop)."""

import asyncio
import itertools
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, List, Optional, Sequence, Tuple, Union, cast

from ..errors import ConfigError
from ..validation import whole_number
from .sampler import SamplingParams

FINISH_REASONS = ("stop", "length", "cancelled", "error")
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Request:
    """One sequence to continue.

    stop_tokens None: the tokenizer's stop tokens. stop_strings: the answer ends before the first
    of them (never given out). logprobs: each new token's log-probability under the model (and
    `top_logprobs` alternatives); prompt_logprobs: the prompt tokens' too (computed without the
    prompt cache). cache_prompt: reuse the keys and values of a slot that holds a prefix.
    """

    prompt_tokens: Sequence[int]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop_tokens: Optional[Sequence[int]] = None
    stop_strings: Sequence[str] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    cache_prompt: bool = True

    def check(self, n_words: int, max_seq_len: int) -> None:
        """ConfigError (or TypeError) naming the first value the engine cannot take."""
        prompt = self.prompt_tokens
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise TypeError(f"prompt_tokens must be a list of token ids, got {type(prompt).__name__}")
        if not prompt:
            raise ConfigError("the prompt is empty (0 tokens); encode prompts with bos=True")
        bad = next((t for t in prompt if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_words), None)
        if bad is not None:
            raise ConfigError(f"the prompt holds {bad!r}, not a token id of this tokenizer (0 .. {n_words - 1})")
        whole_number("max_new_tokens", self.max_new_tokens)
        if len(prompt) >= max_seq_len:
            raise ConfigError(
                f"the prompt has {len(prompt)} tokens, but max_seq_len={max_seq_len} leaves no room for a new "
                "token; shorten the prompt or build with a larger max_seq_len"
            )
        if len(prompt) + self.max_new_tokens > max_seq_len:
            raise ConfigError(
                f"the prompt's {len(prompt)} tokens plus max_new_tokens={self.max_new_tokens} exceed "
                f"max_seq_len={max_seq_len}; ask for at most {max_seq_len - len(prompt)} new tokens"
            )
        self.sampling.check()
        whole_number("top_logprobs", self.top_logprobs, minimum=0, below=MAX_TOP_LOGPROBS + 1)
        if isinstance(self.stop_strings, str) or not all(isinstance(s, str) for s in self.stop_strings):
            raise ConfigError(f"stop_strings must be a list of strings, got {self.stop_strings!r:.80}")


@dataclass(frozen=True)
class TokenEvent:
    """One new token: its text (what it adds to the answer, "" while held back), log-probabilities if
    asked. A last event with token None carries text held back until the answer ended."""

    token: Optional[int]
    text: str
    logprob: Optional[float] = None
    top_logprobs: Optional[List[Tuple[int, float]]] = None


@dataclass
class Completion:
    """How a request ended. finish_reason: stop (a stop token or string), length (max_new_tokens or
    the context), cancelled, or error (then `error` holds it)."""

    tokens: List[int] = field(default_factory=list)
    text: str = ""
    logprobs: Optional[List[float]] = None
    top_logprobs: Optional[List[List[Tuple[int, float]]]] = None
    finish_reason: str = ""
    stop_token: Optional[int] = None  # the stop token that ended it, if one did
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prompt cache
    prompt_logprobs: Optional[List[Optional[float]]] = None  # the first prompt token's is None
    prompt_top_logprobs: Optional[List[Optional[List[Tuple[int, float]]]]] = None
    error: Optional[BaseException] = None


Item = Union[TokenEvent, Completion]
_ids = itertools.count(1)


class RequestHandle:
    """The caller's end of a request: iterate for its TokenEvents (blocking, any thread), `await
    async_events()` on an asyncio loop, `result()` for the Completion, `cancel()` to stop it."""

    def __init__(self, request: Request, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.id = next(_ids)
        self.request = request
        self.cancelled = threading.Event()
        self._loop = loop
        self._items: "Union[queue.Queue[Item], asyncio.Queue[Item]]" = asyncio.Queue() if loop else queue.Queue()
        self._done = threading.Event()
        self._completion: Optional[Completion] = None

    def cancel(self) -> None:
        """Stop generating (within a step); the Completion says cancelled, with what came before."""
        self.cancelled.set()

    # -- the engine's side --
    def put(self, item: Item) -> None:
        if isinstance(item, Completion):
            self._completion = item
            self._done.set()
        if self._loop is None:
            self._items.put_nowait(item)
        elif not self._loop.is_closed():
            _mailbox(self._loop).post(cast("asyncio.Queue[Item]", self._items), item)

    # -- the caller's side --
    def __iter__(self) -> Iterator[TokenEvent]:
        if not isinstance(self._items, queue.Queue):
            raise TypeError(
                "this request was submitted for an asyncio loop; use `async for ... in handle.async_events()`"
            )
        while True:
            item = self._items.get()
            if isinstance(item, Completion):
                return
            yield item

    async def async_events(self) -> AsyncIterator[TokenEvent]:
        if not isinstance(self._items, asyncio.Queue):
            raise TypeError("this request was submitted without an asyncio loop; iterate over the handle instead")
        while True:
            item = await self._items.get()
            if isinstance(item, Completion):
                return
            yield item

    def result(self, timeout: Optional[float] = None) -> Completion:
        """The Completion, once the request has ended (waits up to `timeout` seconds; TimeoutError after)."""
        if not self._done.wait(timeout) or self._completion is None:
            raise TimeoutError(f"request {self.id} has not finished within {timeout} s")
        return self._completion

    @property
    def done(self) -> bool:
        return self._done.is_set()


class _Mailbox:
    """Items bound for queues on one asyncio loop, handed over with one wake-up of the loop per
    batch: a decode step's events for all its rows cost one `call_soon_threadsafe` (a write to the
    loop's self-pipe), not one per row. Each queue still gets its items in the order posted."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = weakref.ref(loop)  # not a strong one: the registry's key must be able to go
        self.lock = threading.Lock()
        self.items: "List[Tuple[asyncio.Queue[Item], Item]]" = []

    def post(self, target: "asyncio.Queue[Item]", item: "Item") -> None:
        with self.lock:
            wake = not self.items
            self.items.append((target, item))
        loop = self.loop()
        if wake and loop is not None:
            try:
                loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop closed meanwhile: nobody is listening any more
                with self.lock:
                    self.items.clear()

    def _deliver(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for target, item in items:
            target.put_nowait(item)


_mailboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]" = weakref.WeakKeyDictionary()
_mailboxes_lock = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _mailboxes_lock:
        box = _mailboxes.get(loop)
        if box is None:
            box = _mailboxes[loop] = _Mailbox(loop)
        return box


def wait_all(handles: List[RequestHandle], timeout: Optional[float] = None) -> List[Completion]:
    """The Completions of `handles`, in order (each waited for up to what is left of `timeout`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for handle in handles:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        out.append(handle.result(left))
    return out
