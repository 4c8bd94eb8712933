"""llama.decoding.engine: many sequences at once over the cache's slots, with a prompt cache.

The answers must not depend on the company a request keeps (other requests starting and stopping
at other steps, prompts of other lengths), nor on the prompt cache; bad requests and failing
steps end only the requests concerned."""

import threading
import time

import pytest
import torch

from llama.decoding.engine import Engine
from llama.decoding.requests import Request, wait_all
from llama.decoding.sampler import SamplingParams
from llama.errors import BusyError, ConfigError, ContextMemoryError, EngineClosedError, GenerationError, RankError

GREEDY = SamplingParams(temperature=0.0)
FORMATS = [("float32", None), ("bfloat16", None), ("float32", "int8"), ("float32", "int4")]
LENGTHS = (3, 9, 17, 5)  # prompt lengths of the crowd


def prompt(gen, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [gen.tokenizer.bos_id] + torch.randint(3, 400, (n - 1,), generator=g).tolist()


@pytest.fixture
def engines():
    made = []

    def make(gen, **kw):
        made.append(Engine(gen, **kw))
        return made[-1]

    yield make
    for engine in made:
        engine.close(drain=False, timeout=30)


def crowd_then_solo(engine, gen, request):
    """`request` among others that start while it runs and end at other steps, then alone."""
    handle = engine.submit(request)
    others = []
    events = iter(handle)
    for i, n in enumerate(LENGTHS):
        others.append(engine.submit(Request(prompt(gen, n, 10 + i), 4 + 7 * i, GREEDY, cache_prompt=False)))
        next(events, None)  # the next one joins a step or two later
    crowded = handle.result(60)
    wait_all(others, 60)
    return crowded, engine.submit(request).result(60)


@pytest.mark.parametrize("dtype, method", FORMATS)
@pytest.mark.parametrize("name", ["mha", "llama3"])
def test_greedy_tokens_and_logprobs_are_the_same_alone_or_in_a_crowd(build, engines, name, dtype, method):
    gen = build(name, dtype=dtype, quantize=method, max_batch_size=5)  # up to 5 rows a step
    engine = engines(gen)
    request = Request(prompt(gen, 11, 1), 24, GREEDY, logprobs=True, cache_prompt=False)
    crowded, alone = crowd_then_solo(engine, gen, request)
    assert crowded.finish_reason == alone.finish_reason == "length"
    assert crowded.tokens == alone.tokens and len(alone.tokens) == 24
    assert max(abs(a - b) for a, b in zip(crowded.logprobs, alone.logprobs)) <= 1e-5


def test_the_engines_greedy_tokens_are_generates(build, engines):
    gen = build("gqa", max_batch_size=3)
    prompts = [prompt(gen, n, n) for n in (4, 12, 7)]
    want = [gen.generate([p], 20, temperature=0, logprobs=True) for p in prompts]
    engine = engines(gen)
    got = wait_all([engine.submit(Request(p, 20, GREEDY, logprobs=True)) for p in prompts], 60)
    for completion, (tokens, logprobs) in zip(got, want):
        assert completion.tokens == tokens[0]
        assert max(abs(a - b) for a, b in zip(completion.logprobs, logprobs[0])) <= 1e-4


def test_a_seed_gives_the_same_sample_alone_or_in_a_crowd(build, engines):
    gen = build("mha", max_batch_size=4)
    engine = engines(gen)
    request = Request(prompt(gen, 8, 2), 24, SamplingParams(temperature=1.0, top_p=0.95, seed=7), cache_prompt=False)
    crowded, alone = crowd_then_solo(engine, gen, request)
    assert crowded.tokens == alone.tokens
    other_seed = Request(request.prompt_tokens, 24, SamplingParams(temperature=1.0, top_p=0.95, seed=8))
    assert engine.submit(other_seed).result(60).tokens != alone.tokens


@pytest.mark.parametrize("dtype, method", [("float32", None), ("float32", "int4")])
def test_the_prompt_cache_computes_only_the_new_tokens_and_changes_nothing(build, engines, dtype, method):
    gen = build("mha", dtype=dtype, quantize=method, max_batch_size=2)
    engine = engines(gen)
    first = prompt(gen, 20, 3)
    one = engine.submit(Request(first, 10, GREEDY)).result(60)
    assert one.cached_tokens == 0
    # the dialog goes on: the first turn and its answer, then new tokens
    follow = first + one.tokens + [7, 8, 9]
    cached = engine.submit(Request(follow, 10, GREEDY, logprobs=True)).result(60)
    fresh = engine.submit(Request(follow, 10, GREEDY, logprobs=True, cache_prompt=False)).result(60)
    assert cached.cached_tokens == len(first) + len(one.tokens) - 1  # all that the slot held
    assert fresh.cached_tokens == 0
    assert cached.tokens == fresh.tokens
    assert max(abs(a - b) for a, b in zip(cached.logprobs, fresh.logprobs)) <= 1e-5
    again = engine.submit(Request(follow, 10, GREEDY)).result(60)
    assert again.cached_tokens == len(follow) - 1 and again.tokens == fresh.tokens  # the last token is recomputed


def test_idle_slots_keep_their_cache_until_needed_least_recently_used_first(build, engines):
    gen = build("mha", max_batch_size=2)
    engine = engines(gen)
    a, b, c = (prompt(gen, 10, s) for s in (4, 5, 6))
    for p in (a, b):
        engine.submit(Request(p, 2, GREEDY)).result(60)
    assert engine.submit(Request(a + [9], 2, GREEDY)).result(60).cached_tokens == 10  # a's slot, now the newest
    engine.submit(Request(c, 2, GREEDY)).result(60)  # takes b's slot, the least recently used
    assert engine.submit(Request(b + [9], 2, GREEDY)).result(60).cached_tokens == 1  # only bos: b was evicted
    assert engine.submit(Request(c + [9], 2, GREEDY)).result(60).cached_tokens == 10


def test_slots_share_one_pool_and_a_request_waits_until_its_blocks_are_free(build, engines, monkeypatch):
    monkeypatch.setattr("llama.kv_cache.BLOCK_TOKENS", 16)
    # 4 slots but blocks for 64 positions: two 24-token requests at a time (2 blocks each at their longest)
    gen = build("mha", max_seq_len=64, max_batch_size=4, kv_cache_tokens=64)
    engine = engines(gen)
    alone = [engine.submit(Request(prompt(gen, 8, s), 16, GREEDY, cache_prompt=False)).result(60) for s in (1, 2, 3)]
    handles = [engine.submit(Request(prompt(gen, 8, s), 16, GREEDY, cache_prompt=False)) for s in (1, 2, 3)]
    peak, deadline = 0, time.monotonic() + 60
    while not all(h.done for h in handles) and time.monotonic() < deadline:
        peak = max(peak, engine.status()["running"])
        time.sleep(0.001)
    crowd = wait_all(handles, 60)
    assert [c.tokens for c in crowd] == [a.tokens for a in alone] and peak <= 2
    assert gen.model.kv_pool.capacity <= 4


def test_finished_sequences_give_their_blocks_to_new_ones_least_recently_used_first(build, engines, monkeypatch):
    monkeypatch.setattr("llama.kv_cache.BLOCK_TOKENS", 16)
    gen = build("mha", max_seq_len=64, max_batch_size=4, kv_cache_tokens=64)
    engine = engines(gen)
    a, b, c = (prompt(gen, 20, s) for s in (4, 5, 6))
    for p in (a, b):
        engine.submit(Request(p, 4, GREEDY)).result(60)  # each keeps 2 blocks for the prompt cache: the pool is full
    engine.submit(Request(c, 4, GREEDY)).result(60)  # needs 2: a's, the least recently used, are given up
    assert engine.submit(Request(b + [9], 2, GREEDY)).result(60).cached_tokens == 20
    assert engine.submit(Request(a + [9], 2, GREEDY)).result(60).cached_tokens == 0


def test_a_request_beyond_the_whole_pool_is_a_context_memory_error_naming_the_figures(build, engines, monkeypatch):
    monkeypatch.setattr("llama.kv_cache.BLOCK_TOKENS", 16)
    gen = build("mha", max_seq_len=64, max_batch_size=4, kv_cache_tokens=32)
    engine = engines(gen)
    with pytest.raises(ContextMemoryError) as err:
        engine.submit(Request(prompt(gen, 20, 1), 20, GREEDY))
    assert str(err.value) == (
        "context memory exhausted: the prompt's 20 tokens plus max_new_tokens=20 (40 tokens, 3 blocks) exceed "
        "what the KV cache holds 2 blocks of 16 tokens (32 tokens, 0.00 GiB), 0 in use can ever hold; ask for "
        "fewer tokens, or build with a larger kv_cache_tokens"
    )
    assert len(engine.submit(Request(prompt(gen, 20, 1), 12, GREEDY)).result(60).tokens) <= 12


def test_tokens_stream_as_they_are_made_and_add_up_to_the_text(build, engines):
    gen = build("mha")
    engine = engines(gen)
    handle = engine.submit(Request(prompt(gen, 6, 1), 16, GREEDY, logprobs=True, top_logprobs=3))
    events = list(handle)
    completion = handle.result()
    assert [e.token for e in events if e.token is not None] == completion.tokens
    assert "".join(e.text for e in events) == completion.text == gen.tokenizer.decode(completion.tokens)
    assert [e.logprob for e in events if e.token is not None] == completion.logprobs
    for event in events:
        if event.token is not None:
            assert len(event.top_logprobs) == 3 and event.top_logprobs[0][1] >= event.logprob - 1e-6


def test_a_stop_string_ends_the_answer_before_it_and_is_never_streamed(build, engines):
    gen = build("mha")
    engine = engines(gen)
    request = Request(prompt(gen, 6, 1), 30, GREEDY)
    full = engine.submit(request).result(60).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = full[: full.index(stop)]
    handle = engine.submit(Request(request.prompt_tokens, 30, GREEDY, stop_strings=["zzzq", stop]))
    streamed = "".join(e.text for e in handle)
    result = handle.result()
    assert result.finish_reason == "stop" and result.text == streamed == cut


def test_stop_tokens_end_the_answer_and_say_which(build, engines):
    gen = build("mha")
    engine = engines(gen)
    free = engine.submit(Request(prompt(gen, 6, 1), 12, GREEDY)).result(60)
    stop_at = free.tokens[4]
    stopped = engine.submit(Request(prompt(gen, 6, 1), 12, GREEDY, stop_tokens=[stop_at])).result(60)
    assert stopped.finish_reason == "stop" and stopped.stop_token == stop_at
    assert stopped.tokens == free.tokens[: free.tokens.index(stop_at)]


def test_bad_requests_are_typed_errors_naming_the_value(build, engines):
    gen = build("mha", max_seq_len=32)
    engine = engines(gen)
    cases = [
        (Request([], 4), "the prompt is empty (0 tokens); encode prompts with bos=True"),
        (
            Request([1] * 32, 4),
            "the prompt has 32 tokens, but max_seq_len=32 leaves no room for a new token; "
            "shorten the prompt or build with a larger max_seq_len",
        ),
        (
            Request([1] * 30, 4),
            "the prompt's 30 tokens plus max_new_tokens=4 exceed max_seq_len=32; ask for at most 2 new tokens",
        ),
        (Request([1, 9999], 4), "the prompt holds 9999, not a token id of this tokenizer (0 .. 511)"),
        (Request([1], 0), "max_new_tokens must be a whole number > 0, got 0"),
        (
            Request([1], 4, SamplingParams(temperature=-1)),
            "temperature must be a number >= 0 (0 = greedy), got -1; e.g. 0.6",
        ),
        (Request([1], 4, top_logprobs=21), "top_logprobs must be an integer in [0, 21), got 21"),
    ]
    for request, message in cases:
        with pytest.raises(ConfigError) as info:
            engine.submit(request)
        assert str(info.value) == message
    engine.close()
    with pytest.raises(EngineClosedError, match="the engine is shut down and takes no more requests"):
        engine.submit(Request([1], 4))


def test_a_full_queue_is_busy_at_once(build, engines):
    gen = build("mha", max_batch_size=1)
    engine = engines(gen, max_queue=2)
    running = engine.submit(Request(prompt(gen, 4, 1), 60, GREEDY, stop_tokens=[]))
    next(iter(running))  # it holds the only slot
    queued = [engine.submit(Request(prompt(gen, 4, 2), 2, GREEDY, stop_tokens=[])) for _ in range(2)]
    with pytest.raises(BusyError) as info:
        engine.submit(Request(prompt(gen, 4, 3), 2, GREEDY))
    assert str(info.value) == (
        "the engine is busy: 2 requests already wait for one of 1 slots (max_queue=2); try again shortly"
    )
    running.cancel()
    assert running.result(60).finish_reason == "cancelled"
    assert [c.finish_reason for c in wait_all(queued, 60)] == ["length", "length"]  # the freed slot serves them


def test_a_cancelled_request_frees_its_slot_within_a_step(build, engines):
    gen = build("mha", max_batch_size=1, max_seq_len=128)
    engine = engines(gen)
    handle = engine.submit(Request(prompt(gen, 4, 1), 120, GREEDY, stop_tokens=[]))
    events = iter(handle)
    for _ in range(3):
        next(events)
    handle.cancel()
    result = handle.result(60)
    assert result.finish_reason == "cancelled" and 3 <= len(result.tokens) < 120
    assert engine.submit(Request(prompt(gen, 4, 2), 3, GREEDY, stop_tokens=[])).result(60).finish_reason == "length"


def test_a_long_prompt_is_computed_a_chunk_at_a_time_between_the_running_steps(build, engines):
    gen = build("mha", max_batch_size=2, max_seq_len=64)
    engine = engines(gen, prefill_chunk=4)
    calls = []
    real = engine.steps._compute
    engine.steps._compute = lambda tokens, slots, positions, all_logits: (
        calls.append((len(tokens), len(tokens[0]))) or real(tokens, slots, positions, all_logits)
    )
    running = engine.submit(Request(prompt(gen, 3, 1), 40, GREEDY))
    next(iter(running))
    joining = engine.submit(Request(prompt(gen, 20, 2), 4, GREEDY))
    wait_all([running, joining], 60)
    chunks = [i for i, (rows, length) in enumerate(calls) if length == 4]
    assert len(chunks) == 5  # 20 prompt tokens, 4 at a time
    for a, b in zip(chunks, chunks[1:]):
        assert any(calls[i] == (1, 1) for i in range(a + 1, b))  # the running sequence stepped in between


def test_a_failing_step_fails_its_requests_and_the_engine_serves_on(build, engines):
    gen = build("mha", max_batch_size=2)
    engine = engines(gen)
    poison = 401
    real = engine.steps._compute

    def compute(tokens, slots, positions, all_logits):
        if any(poison in row for row in tokens):
            raise RuntimeError("the model failed on demand")
        return real(tokens, slots, positions, all_logits)

    engine.steps._compute = compute
    healthy = engine.submit(Request(prompt(gen, 5, 1), 30, GREEDY))
    next(iter(healthy))
    failing = engine.submit(Request([1, 7, poison], 5, GREEDY)).result(60)
    assert failing.finish_reason == "error" and str(failing.error) == "the model failed on demand"
    assert healthy.result(60).finish_reason == "length" and len(healthy.result().tokens) == 30
    assert engine.submit(Request([1, 7, 8], 5, GREEDY)).result(60).finish_reason == "length"


def test_non_finite_logits_fail_only_their_request(build, engines):
    gen = build("mha", max_batch_size=2)
    engine = engines(gen)
    real = engine.steps._compute

    def compute(tokens, slots, positions, all_logits):
        logits = real(tokens, slots, positions, all_logits).clone()
        for b, row in enumerate(tokens):
            if row[-1] == 402:
                logits[b] = float("nan")
        return logits

    engine.steps._compute = compute
    bad = engine.submit(Request([1, 5, 402], 5, GREEDY))
    good = engine.submit(Request([1, 5, 6], 5, GREEDY))
    result = bad.result(60)
    assert result.finish_reason == "error" and isinstance(result.error, GenerationError)
    assert str(result.error).startswith("the model produced non-finite logits (inf or nan) with float32 weights")
    assert good.result(60).finish_reason == "length"


def test_requests_from_many_threads_each_get_their_own_answer(build, engines):
    gen = build("mha", max_batch_size=3)
    engine = engines(gen)
    prompts = [prompt(gen, 3 + i, 20 + i) for i in range(6)]
    alone = [engine.submit(Request(p, 8, GREEDY, cache_prompt=False)).result(60).tokens for p in prompts]
    got = [None] * len(prompts)

    def ask(i):
        got[i] = engine.submit(Request(prompts[i], 8, GREEDY, cache_prompt=False)).result(60).tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == alone


def test_close_drains_what_is_running_and_waiting(build):
    gen = build("mha", max_batch_size=1)
    engine = Engine(gen)
    handles = [engine.submit(Request(prompt(gen, 4, i), 6, GREEDY, stop_tokens=[])) for i in range(3)]
    started = time.monotonic()
    engine.close(timeout=60)
    assert time.monotonic() - started < 60
    assert [h.result(0).finish_reason for h in handles] == ["length"] * 3
    assert engine.status()["closed"]


def test_a_lost_peer_rank_answers_the_running_and_the_just_admitted_requests_with_its_error(build, engines):
    # Under torchrun, rank 0 broadcasts every call; once a peer is gone each broadcast fails. Every
    # request, running or taking a slot at that moment, must hear it at once, not hang until shutdown.
    gen = build("mha", max_batch_size=2)
    engine = engines(gen)
    real, calls, inside, go = engine.steps._compute, [], threading.Event(), threading.Event()

    def compute(*args):
        calls.append(args)
        if len(calls) == 3:  # the prompt and two decode steps in: hold the third until the peer is gone
            inside.set()
            go.wait(30)
        return real(*args)

    def send(message):
        raise gone

    engine.steps._compute = compute
    gone = RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:1234")
    running = engine.submit(Request(prompt(gen, 5, 1), 40, GREEDY, stop_tokens=[]))
    assert inside.wait(30)
    engine.steps.world, engine.steps._send = 2, send
    joining = engine.submit(Request(prompt(gen, 4, 2), 5, GREEDY))
    go.set()
    for handle in (running, joining):
        result = handle.result(30)
        assert result.finish_reason == "error" and isinstance(result.error, RankError)
        assert str(result.error) == (
            "lost contact with another rank (Connection closed by peer [127.0.0.1]:1234); the rank that failed "
            "prints its own error, and torchrun's failure report names it (Root Cause)"
        )
    with pytest.raises(EngineClosedError, match="the engine is shut down and takes no more requests: "):
        engine.submit(Request([1, 7, 8], 5, GREEDY))
