"""Many sequences at once: continuous batching over the KV cache's slots, with a prompt cache.

`Engine(generator)` owns the model of a built `Llama` and serves Requests submitted from any
thread: each is given a free slot (the cache's batch rows, llama.decoding.slots), its prompt is
computed a chunk per scheduler round (with other prompts' chunks while they fit in one chunk's
worth of tokens, so the running sequences wait at most one chunk), then it
joins the decode steps, which advance every running sequence by one token, each at its own
position. A sequence leaves the step it finishes and its slot takes the next request at once;
requests beyond the slots wait in a bounded queue (full: BusyError). A finished sequence's slot
keeps its keys and values, so that a later prompt beginning with the same tokens computes only
the rest.

A sequence's tokens do not depend on its company: its prompt is computed alone, in the same
chunks; on the native step every row of a decode step is computed by the same instructions
whatever the others are (llama/kernels/csrc/forward.c), and each sequence samples from its own
seeded generator (llama.decoding.sampler). `Llama.generate` is a separate path (the reference's
loop) and unchanged; do not call it on a Llama while an engine serves it (they share the caches).

Model parallel: build the Llama on every rank, run the Engine on rank 0 and `Engine.follow` on the
others; rank 0's forward calls are broadcast and repeated (llama.decoding.row_steps).
"""

import logging
import threading
from collections import deque
from typing import Deque, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..errors import BusyError, ContextMemoryError, EngineClosedError, RankError
from ..kv_cache import blocks_for
from ..runtime.device_tuning import release_openmp_workers
from ..runtime.ranks import peer_failure
from .loop import non_finite_error
from .requests import Completion, Request, RequestHandle, TokenEvent
from .row_steps import RowSteps
from .sampler import top_logprobs
from .sequence import ActiveSequence
from .slots import SlotTable

log = logging.getLogger(__name__)

IDLE_HEARTBEAT_S = 30.0  # how often an idle rank 0 tells the other ranks it is alive


class Engine:
    def __init__(self, generator, max_queue: int = 64, prefill_chunk: Optional[int] = None):
        """generator: a built `Llama` (its model and tokenizer); max_queue: requests that may wait for
        a slot; prefill_chunk: prompt tokens computed per scheduler round (default: what the native
        step takes at once, else 512)."""
        self.tokenizer = generator.tokenizer
        params = generator.model.params
        self.max_seq_len, self.n_slots, self.max_queue = params.max_seq_len, params.max_batch_size, max_queue
        self.steps = RowSteps(generator.model, generator.decode_step)
        self.prefill_chunk = prefill_chunk or self.steps.prefill_chunk
        self.slots = SlotTable(self.n_slots)
        self.pool = generator.model.kv_pool
        self._reserved = 0  # blocks set aside for the running sequences (each at its longest)
        self.weight_dtype = generator.model.tok_embeddings.weight.dtype
        self._lock = threading.Condition()
        self._waiting: Deque[RequestHandle] = deque()
        self._running: Dict[int, ActiveSequence] = {}
        self._closing = False
        self._failure: Optional[BaseException] = None
        if self.steps.device.type == "cpu":
            release_openmp_workers()  # the steps run on the engine's thread, with its own OpenMP workers
        self._thread = threading.Thread(target=self._serve, name="llama-engine", daemon=True)
        self._thread.start()

    # ---- callers ----
    def submit(self, request: Request, loop=None) -> RequestHandle:
        """Queue `request`; -> its handle (events as they come). ConfigError for a request it cannot
        take, BusyError when max_queue requests already wait, EngineClosedError after close()."""
        request.check(self.tokenizer.n_words, self.max_seq_len)
        need = self._blocks_of(request)
        if need > self.pool.max_blocks:
            tokens = len(request.prompt_tokens) + request.max_new_tokens
            raise ContextMemoryError(
                f"context memory exhausted: the prompt's {len(request.prompt_tokens)} tokens plus max_new_tokens="
                f"{request.max_new_tokens} ({tokens} tokens, {need} blocks) exceed what {self.pool.describe()} "
                "can ever hold; ask for fewer tokens, or build with a larger kv_cache_tokens"
            )
        handle = RequestHandle(request, loop)
        with self._lock:
            if self._closing or self._failure is not None:
                why = f": {self._failure}" if self._failure is not None else ""
                raise EngineClosedError(f"the engine is shut down and takes no more requests{why}")
            if len(self._waiting) >= self.max_queue:
                raise BusyError(
                    f"the engine is busy: {len(self._waiting)} requests already wait for one of {self.n_slots} "
                    f"slots (max_queue={self.max_queue}); try again shortly"
                )
            self._waiting.append(handle)
            self._lock.notify()
        return handle

    def generate(self, request: Request) -> Completion:
        """submit(request) and wait for its Completion."""
        return self.submit(request).result()

    def status(self) -> dict:
        with self._lock:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "slots": self.n_slots,
                "closed": self._closing or self._failure is not None,
            }

    def close(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        """Take no more requests; drain=True lets the running and waiting ones finish, else they are
        cancelled. Returns once the engine has stopped (or `timeout` seconds have passed)."""
        with self._lock:
            self._closing = True
            if not drain:
                for handle in [*self._waiting, *(s.handle for s in self._running.values())]:
                    handle.cancel()
            self._lock.notify()
        self._thread.join(timeout)

    @staticmethod
    def follow(generator) -> None:
        """On a model-parallel rank other than 0: run rank 0's engine steps until it closes."""
        RowSteps(generator.model, generator.decode_step).follow()

    # ---- the scheduler (its own thread) ----
    def _serve(self) -> None:
        try:
            with torch.inference_mode():  # once for the thread's life (per step it cost ~40 us of ~1 ms)
                while self._round():
                    pass
        except Exception as exc:  # noqa: BLE001 - whatever broke, every waiting caller must hear of it
            lost = peer_failure(exc)
            if lost is None:
                log.exception("the engine stopped")
            else:  # the echo of another rank's failure, which that rank and torchrun report: one line
                log.error("the engine stopped: %s", lost)
                exc = RankError(lost)
            self._fail_all(exc)
        finally:
            try:
                self.steps.stop()
            except Exception as exc:  # noqa: BLE001 - the other ranks are gone already
                log.debug("could not release the other ranks: %s", exc)

    def _round(self) -> bool:
        """One scheduler round: admit, one prompt chunk, one decode step. -> False once closed and empty."""
        with self._lock:
            if not self._waiting and not self._running:
                if self._closing:
                    return False
                if not self._lock.wait(IDLE_HEARTBEAT_S):
                    self.steps.idle()
                return True
            self._admit()
        self._drop_cancelled()
        self._prefill_round()
        decoding = [s for s in self._running.values() if not s.prefilling and s.last is not None]
        if decoding:
            self._decode(decoding)
        return True

    def _blocks_of(self, request: Request) -> int:
        """Cache blocks a request holds at its longest (its prompt and max_new_tokens)."""
        return blocks_for(len(request.prompt_tokens) + request.max_new_tokens, self.pool.block_tokens)

    def _admit(self) -> None:
        """Waiting requests take free slots, in order, while the cache's pool can set aside what each
        holds at its longest: a request that does not fit yet waits (with those behind it) for
        running ones to end, so that no sequence ever runs out of cache memory midway."""
        while self._waiting and self.slots.free():
            handle = self._waiting[0]
            if handle.cancelled.is_set():
                self._waiting.popleft()
                handle.put(Completion(finish_reason="cancelled", prompt_tokens=len(handle.request.prompt_tokens)))
                continue
            request = handle.request
            need = self._blocks_of(request)
            if self._reserved + need > self.pool.max_blocks:
                return
            reuse = request.cache_prompt and not request.prompt_logprobs
            got = self.slots.acquire(request.prompt_tokens, reuse)
            if got is None:  # cannot happen while free() says otherwise
                return
            self._waiting.popleft()
            slot, cached = got
            seq = ActiveSequence(handle, slot, cached, self.tokenizer, self.tokenizer.stop_tokens)
            seq.blocks, self._reserved = need, self._reserved + need
            self._running[slot] = seq  # before forget(), which can find a peer rank gone: _fail_all answers it
            self.steps.forget(slot, cached)  # the blocks past the reused prefix go back to the pool

    def _make_room(self, slots: List[int], ends: List[int]) -> None:
        """Blocks for these slots up to these lengths, taken first from the pool's free ones, then
        from finished sequences kept for the prompt cache (least recently used first)."""
        need = sum(self.pool.missing(s, n) for s, n in zip(slots, ends))
        while need > self.pool.available:
            idle = self.slots.idle_holding()
            if idle is None:
                break  # ensure() says what is missing
            self.slots.release(idle, keep=False)
            self.steps.forget(idle, 0)
        self.pool.ensure(slots, ends)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running.values() if s.handle.cancelled.is_set()]:
            self._finish(seq, "cancelled")

    def _prefill_round(self) -> None:
        """Prompt chunks of the prefilling sequences, oldest request first, as many as fit in one
        chunk's worth of tokens (always at least one): short prompts that arrive together start
        together, and the running sequences still wait for at most prefill_chunk prompt tokens.
        While no sequence decodes there is nobody to keep waiting: every prefilling sequence
        computes a chunk."""
        prefilling = [s for s in self._running.values() if s.prefilling]
        decoding = len(prefilling) < len(self._running)
        budget = self.prefill_chunk if decoding else float("inf")
        for seq in sorted(prefilling, key=lambda s: s.handle.id):
            size = min(self.prefill_chunk, len(seq.prompt) - seq.next_pos)
            if size > budget:
                break
            budget -= size
            self._prefill(seq)

    def _prefill(self, seq: ActiveSequence) -> None:
        start = seq.next_pos
        chunk = seq.prompt[start : start + self.prefill_chunk]
        logits = self._step([seq], [chunk], [start], all_logits=seq.result.prompt_logprobs is not None)
        if logits is None:
            return
        self.slots.extend(seq.slot, chunk)
        seq.next_pos += len(chunk)
        result = seq.result
        if result.prompt_logprobs is not None and result.prompt_top_logprobs is not None:
            following = seq.prompt[start + 1 : start + 1 + len(chunk)]  # what each position's logits predict
            scores = F.log_softmax(logits[0, : len(following)], dim=-1)
            result.prompt_logprobs += scores.gather(-1, torch.tensor(following)[:, None])[:, 0].tolist()
            n = seq.request.top_logprobs
            result.prompt_top_logprobs += [top_logprobs(row, n) if n else None for row in scores]
        if not seq.prefilling:
            self._accept(seq, logits, 0)

    def _decode(self, batch: List[ActiveSequence]) -> None:
        fed = [s.last for s in batch if s.last is not None]  # every sequence of a decode step has one
        positions = [self.slots.length(s.slot) for s in batch]
        logits = self._step(batch, [[token] for token in fed], positions)
        if logits is None:
            return
        # One pass over the whole step for the checks every row needs (per-row calls cost more than
        # the step's sampling itself at 8 rows): finiteness, and the greedy rows' argmax.
        greedy = [s.sampler.greedy for s in batch]
        finite, best = self.steps.scan(logits, any(greedy))
        for b, (seq, token) in enumerate(zip(batch, fed)):
            self.slots.extend(seq.slot, [token])
            self._accept(seq, logits, b, finite[b], best[b] if best is not None and greedy[b] else None)

    def _step(self, batch: List[ActiveSequence], tokens, positions, all_logits: bool = False) -> Optional[torch.Tensor]:
        """The forward call for `batch`; on failure its sequences end with the error (None is returned),
        and a lost peer rank ends the engine."""
        slots = [s.slot for s in batch]
        try:
            self._make_room(slots, [p + len(t) for p, t in zip(positions, tokens)])
            return self.steps(tokens, slots, positions, all_logits)
        except Exception as exc:  # noqa: BLE001 - a failed step fails its requests, not the engine
            if isinstance(exc, RankError) or peer_failure(exc) is not None:
                raise
            log.warning("a step of %d sequence(s) failed: %s", len(batch), exc)
            for seq in batch:
                self._finish(seq, "error", exc)
            return None

    def _accept(
        self,
        seq: ActiveSequence,
        logits: torch.Tensor,
        b: int,
        finite: Optional[bool] = None,
        chosen: Optional[int] = None,
    ) -> None:
        """The next token of `seq` from row b of a step's logits (B, T, vocab; the last position's):
        sampled, streamed, and checked for the end. finite / chosen: whether that row is finite and its
        greedy token, where already known (a greedy step without log-probs then reads no tensor here:
        right after a native step every torch call costs tens of microseconds more than it would)."""
        row = logits[b, -1] if finite is None or chosen is None or seq.result.logprobs is not None else None
        if not (finite if finite is not None else bool(torch.isfinite(logits[b, -1]).all())):
            self._finish(seq, "error", non_finite_error(self.weight_dtype))
            return
        token = chosen if chosen is not None else seq.sampler.choose(logits[b, -1])
        if token in seq.stops:
            seq.result.stop_token = token
            self._finish(seq, "stop")
            return
        event = seq.record(token, row)
        text, stopped = seq.stop_text.push(seq.deltas.push(token))
        seq.handle.put(TokenEvent(token, text, event[0], event[1]))
        seq.result.text += text
        if stopped:
            self._finish(seq, "stop")
        elif len(seq.result.tokens) >= seq.request.max_new_tokens:
            self._finish(seq, "length")
        else:
            seq.last = token

    def _finish(self, seq: ActiveSequence, reason: str, error: Optional[BaseException] = None) -> None:
        if reason in ("stop", "length") and not seq.stop_text.stopped:
            rest, stopped = seq.stop_text.push(seq.deltas.flush())
            rest += seq.stop_text.flush()
            if rest:
                seq.handle.put(TokenEvent(None, rest))
                seq.result.text += rest
            reason = "stop" if stopped else reason
        seq.result.finish_reason, seq.result.error = reason, error
        with self._lock:
            if self._running.pop(seq.slot, None) is not None:
                self._reserved -= seq.blocks
            self.slots.release(seq.slot, keep=error is None)
            if error is not None and self._failure is None:  # after a failure the other ranks may be gone
                self.steps.forget(seq.slot, 0)
        seq.handle.put(seq.result)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            self._failure = exc
            waiting, self._waiting = list(self._waiting), deque()
        for seq in list(self._running.values()):
            self._finish(seq, "error", exc)
        for handle in waiting:
            handle.put(Completion(finish_reason="error", error=exc, prompt_tokens=len(handle.request.prompt_tokens)))
