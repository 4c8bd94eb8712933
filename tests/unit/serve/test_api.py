"""The OpenAI-compatible API with the official `openai` client (sync and async, streamed and not) and
raw HTTP, against a server in this process: answers equal the library's, OpenAI's shapes, errors."""

import asyncio
import json
import threading

import httpx
import openai
import pytest

from llama import Llama
from support.server import running_server

DIALOG = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a list?"}]
PROMPTS = ["A list comprehension", "The function returns"]


@pytest.fixture(scope="module")
def demo():
    return Llama.build_demo(device="cpu", max_batch_size=4)


@pytest.fixture(scope="module")
def server(demo):
    with running_server(demo, model_id="llama-demo") as (url, engine):
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)


def test_a_greedy_chat_answer_is_chat_completions(demo, client):
    want = demo.chat_completion([DIALOG], temperature=0, max_gen_len=24)[0]["generation"]["content"]
    got = client.chat.completions.create(model="llama-demo", messages=DIALOG, temperature=0, max_tokens=24)
    assert got.choices[0].message.content == want
    assert got.choices[0].message.role == "assistant" and got.object == "chat.completion"
    assert got.model == "llama-demo" and got.id.startswith("chatcmpl-")
    assert got.usage.prompt_tokens == len(demo.encode_dialogs([DIALOG], 1)[0][0])
    assert got.usage.completion_tokens == len(demo.tokenizer.encode(want, bos=False, eos=False)) or want
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
    assert got.choices[0].finish_reason in ("stop", "length")


def test_content_parts_are_joined_as_text(demo, client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "a list?"}]}]
    got = client.chat.completions.create(model="llama-demo", messages=parts, temperature=0, max_tokens=12)
    want = demo.chat_completion([[{"role": "user", "content": "What is a list?"}]], temperature=0, max_gen_len=12)
    assert got.choices[0].message.content == want[0]["generation"]["content"]


def test_completions_equal_text_completion_one_choice_per_prompt_in_order(demo, client):
    want = [r["generation"] for r in demo.text_completion(PROMPTS, temperature=0, max_gen_len=16)]
    got = client.completions.create(model="llama-demo", prompt=PROMPTS, temperature=0, max_tokens=16)
    assert [c.text for c in sorted(got.choices, key=lambda c: c.index)] == want
    assert [c.index for c in got.choices] == [0, 1]
    assert got.object == "text_completion" and got.id.startswith("cmpl-")


def test_a_stream_sends_the_role_first_then_deltas_one_id_a_finish_and_the_usage(client):
    whole = client.chat.completions.create(model="llama-demo", messages=DIALOG, temperature=0, max_tokens=20)
    chunks = list(client.chat.completions.create(model="llama-demo", messages=DIALOG, temperature=0, max_tokens=20,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_the_raw_stream_is_server_sent_events_ending_with_done(server):
    body = {"prompt": "A list", "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server[0]}/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    pieces = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert pieces[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_async_client_streamed_and_not(client, server):
    async def both():
        aclient = openai.AsyncOpenAI(base_url=server[0], api_key="unused", max_retries=0)
        whole = await aclient.completions.create(model="llama-demo", prompt="Python is", temperature=0, max_tokens=12)
        parts = []
        async for chunk in await aclient.completions.create(
            model="llama-demo", prompt="Python is", temperature=0, max_tokens=12, stream=True
        ):
            parts.append(chunk.choices[0].text if chunk.choices else "")
        await aclient.close()
        return whole.choices[0].text, "".join(parts)

    whole, streamed = asyncio.run(both())
    assert whole == streamed and whole


def test_chat_logprobs_with_alternatives(client):
    got = client.chat.completions.create(model="llama-demo", messages=DIALOG, temperature=0, max_tokens=6,
                                         logprobs=True, top_logprobs=3)  # fmt: skip
    content = got.choices[0].logprobs.content
    assert len(content) == got.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # greedy: the chosen one is the likeliest
        assert bytes(entry.bytes).decode(errors="replace") or entry.token == ""


def test_completion_logprobs_with_echo_score_the_prompt_too(demo, client):
    got = client.completions.create(model="llama-demo", prompt="A list", temperature=0, max_tokens=4, logprobs=2,
                                    echo=True)  # fmt: skip
    choice = got.choices[0]
    prompt_len = len(demo.tokenizer.encode("A list", bos=True, eos=False))
    lp = choice.logprobs
    assert len(lp.tokens) == prompt_len + 4 and lp.token_logprobs[0] is None
    assert choice.text.startswith("A list")
    scored = demo.text_completion(["A list"], temperature=0, max_gen_len=0, logprobs=True, echo=True)[0]["logprobs"]
    assert lp.token_logprobs[1:prompt_len] == pytest.approx(scored[1:], abs=1e-4)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])


def test_a_stop_string_cuts_the_text_and_is_never_streamed(client):
    free = client.completions.create(model="llama-demo", prompt="A list", temperature=0, max_tokens=24).choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    cut = client.completions.create(model="llama-demo", prompt="A list", temperature=0, max_tokens=24, stop=[stop])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    chunks = client.completions.create(model="llama-demo", prompt="A list", temperature=0, max_tokens=24, stop=stop,
                                       stream=True)  # fmt: skip
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == cut.choices[0].text


def test_n_seeded_choices_are_reproducible(client):
    def ask():
        return client.chat.completions.create(model="llama-demo", messages=DIALOG, max_tokens=10, n=3, seed=5,
                                              temperature=1.0)  # fmt: skip

    first, again = ask(), ask()
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1


def test_the_prompt_cache_is_reported(client):
    messages = [{"role": "user", "content": "Tell me about dictionaries and their methods."}]
    client.chat.completions.create(model="llama-demo", messages=messages, temperature=0, max_tokens=4)
    again = client.chat.completions.create(model="llama-demo", messages=messages, temperature=0, max_tokens=4)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_models_and_health(server):
    models = httpx.get(f"{server[0]}/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["llama-demo"]
    assert httpx.get(f"{server[0]}/models/llama-demo").json()["id"] == "llama-demo"
    health = httpx.get(server[0].replace("/v1", "/health"))
    assert health.status_code == 200 and health.json()["status"] == "ok"


def error_of(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"messages": "hi"}, "messages", "'messages' must be a non-empty list of messages, got 'hi'"),
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role",
            "'messages[0].role' must be 'system' or 'user' or 'assistant', got 'bot'",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            '\'messages[0].content\' must be a string or a list of {"type": "text", "text": ...} parts, got 5',
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].type",
            "'messages[0].content[0]' is a 'image_url' part; this server takes text parts only",
        ),
        ({"messages": DIALOG, "temperature": 3}, "temperature", "'temperature' must be a number in [0, 2], got 3"),
        (
            {"messages": DIALOG, "temperature": "hot"},
            "temperature",
            "'temperature' must be a number in [0, 2], got 'hot'",
        ),
        ({"messages": DIALOG, "top_p": 0}, "top_p", "'top_p' must be a number in (0, 1], got 0"),
        ({"messages": DIALOG, "max_tokens": 0}, "max_tokens", "'max_tokens' must be an integer >= 1, got 0"),
        ({"messages": DIALOG, "n": 99}, "n", "'n' must be an integer in [1, 16], got 99"),
        (
            {"messages": DIALOG, "stop": ["a", "b", "c", "d", "e"]},
            "stop",
            "'stop' must be a string or a list of at most 4 strings, got ['a', 'b', 'c', 'd', 'e']",
        ),
        ({"messages": DIALOG, "top_logprobs": 2}, "top_logprobs", "'top_logprobs' needs 'logprobs': true"),
        (
            {"messages": DIALOG, "logprobs": True, "top_logprobs": 21},
            "top_logprobs",
            "'top_logprobs' must be an integer in [0, 20], got 21",
        ),
        (
            {"messages": DIALOG, "logit_bias": {"1": 5}},
            "logit_bias",
            "'logit_bias' is not supported by this server; leave it out",
        ),
        (
            {"messages": DIALOG, "response_format": {"type": "json_object"}},
            "response_format",
            "'response_format' is not supported by this server; leave it out",
        ),
        (
            {"messages": DIALOG, "max_tokens": 1000},
            "max_tokens",
            "This model's maximum context length is 256 tokens; the prompt ('messages') has 45 tokens and max_tokens "
            "asks for 1000 more (1045 in all); lower max_tokens to at most 211 or shorten the prompt",
        ),
        (
            {"messages": DIALOG, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
            "tools need a Llama 3.1+ model; this is a Llama 2 model (SentencePiece tokenizer), whose [INST] chat "
            "format has no tool calling",
        ),
    ],
)
def test_bad_chat_requests_are_400s_naming_the_field(server, body, param, message):
    error = error_of(httpx.post(f"{server[0]}/chat/completions", json=body, timeout=30), 400)
    assert (error["param"], error["message"]) == (param, message)


def test_malformed_and_misdirected_requests_keep_the_server_serving(server, client):
    url = server[0]
    assert error_of(httpx.post(f"{url}/completions", content=b"{nope", timeout=30), 400)["code"] == "invalid_json"
    assert error_of(httpx.post(f"{url}/completions", content=b"[1, 2]", timeout=30), 400)["message"] == (
        "the request body must be a JSON object")  # fmt: skip
    wrong = error_of(httpx.post(f"{url}/completions", json={"model": "gpt-4", "prompt": "x"}, timeout=30), 404)
    assert wrong == {"message": "The model 'gpt-4' does not exist; this server serves 'llama-demo'", "type":
                     "invalid_request_error", "param": "model", "code": "model_not_found"}  # fmt: skip
    assert error_of(httpx.get(f"{url}/nowhere"), 404)["message"] == "Unknown path: GET /v1/nowhere"
    assert error_of(httpx.get(f"{url}/completions"), 405)["code"] == "method_not_allowed"
    big = error_of(httpx.post(f"{url}/completions", content=b" " * (9 << 20), timeout=60), 413)
    assert big["code"] == "request_too_large"
    assert client.completions.create(model="llama-demo", prompt="Still", max_tokens=2).choices  # still serving


def test_a_wrong_or_missing_key_is_401_and_health_stays_public(demo):
    with running_server(demo, model_id="llama-demo", api_key="s3cret") as (url, _):
        assert error_of(httpx.get(f"{url}/models"), 401)["message"] == (
            "Missing API key (Authorization: Bearer KEY)")  # fmt: skip
        wrong = httpx.get(f"{url}/models", headers={"Authorization": "Bearer nope"})
        assert error_of(wrong, 401) == {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                        "param": None, "code": "invalid_api_key"}  # fmt: skip
        assert httpx.get(url.replace("/v1", "/health")).status_code == 200
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert good.completions.create(model="llama-demo", prompt="A", max_tokens=2).choices


def test_a_full_queue_is_429_with_retry_after(demo):
    small = Llama.build_demo(device="cpu", max_batch_size=1)
    with running_server(small, model_id="llama-demo", max_queue=1) as (url, engine):
        real, eos = engine.steps._compute, small.tokenizer.eos_id

        def slow_and_endless(*args):
            threading.Event().wait(0.02)
            logits = real(*args)
            logits[..., eos] = -1e9
            return logits

        engine.steps._compute = slow_and_endless
        body = {"prompt": "A list", "max_tokens": 200, "stream": True}
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the stream (and so cancels)
            next(lines)  # it holds the only slot
            waiting = threading.Thread(target=httpx.post, args=(f"{url}/completions",),
                                       kwargs={"json": {"prompt": "B", "max_tokens": 2}, "timeout": 60})  # fmt: skip
            waiting.start()
            for _ in range(200):
                if engine.status()["waiting"]:
                    break
                threading.Event().wait(0.05)
            busy = httpx.post(f"{url}/completions", json={"prompt": "C", "max_tokens": 2}, timeout=60)
            assert error_of(busy, 429)["code"] == "server_busy" and busy.headers["retry-after"] == "1"
        waiting.join(60)
        assert httpx.post(f"{url}/completions", json={"prompt": "D", "max_tokens": 2}, timeout=60).status_code == 200


def test_a_bounded_load_gets_each_answer_as_it_gets_alone(client):
    prompts = [f"Question {i}: what does the {word} statement do?" for i, word in enumerate(["with", "for", "if",
               "while", "try", "def", "class", "return"])]  # fmt: skip

    def ask(prompt):
        return (
            client.completions.create(model="llama-demo", prompt=prompt, temperature=0, max_tokens=12).choices[0].text
        )

    alone = {p: ask(p) for p in prompts}
    jobs = [prompts[i % len(prompts)] for i in range(32)]
    results, errors = [None] * len(jobs), []

    def worker(k):
        for i in range(k, len(jobs), 16):  # 16 concurrent clients, 32 requests
            try:
                results[i] = ask(jobs[i])
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == [alone[p] for p in jobs]


def test_clients_that_go_away_mid_stream_free_their_slots(server, client):
    url, engine = server
    body = {"prompt": "A long story about lists", "max_tokens": 200, "stream": True}
    streams = []
    with httpx.Client(timeout=60) as http:
        for _ in range(4):  # max_batch_size streams
            response = http.send(http.build_request("POST", f"{url}/completions", json=body), stream=True)
            lines = response.iter_lines()
            next(lines)
            streams.append((response, lines))
        for response, _ in streams:
            response.close()
    for _ in range(200):
        if engine.status()["running"] == 0:
            break
        threading.Event().wait(0.05)
    assert engine.status()["running"] == 0
    answers = [client.completions.create(model="llama-demo", prompt=f"New {i}", max_tokens=3) for i in range(4)]
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
