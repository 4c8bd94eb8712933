"""Tool calling through the server with the official client: a scripted Llama 3.1 model emits a chosen
call, the client sends the result back as a `tool` message, and the model answers (streamed and not)."""

import json

import httpx
import openai
import pytest
import torch

from support.server import running_server

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                            "parameters": CITY}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}'
TWO_CALLS = '<function=get_weather>{"city": "Paris"}</function><function=get_time>{"city": "Paris"}</function>'
ANSWER = "It is sunny in Paris, 24 degrees."


class ScriptedModel:
    """Stands in for the engine's forward calls: after the last assistant header, the model "writes"
    the script `pick(prompt)` chooses, token by token, then <|eot_id|> or <|eom_id|>."""

    def __init__(self, tokenizer, vocab: int, call: str = CALL):
        self.tok, self.vocab, self.call = tokenizer, vocab, call
        specials = tokenizer.special_tokens
        self.result_header = [specials["<|start_header_id|>"], *self._ids("ipython")]
        self.eot, self.eom = specials["<|eot_id|>"], specials["<|eom_id|>"]
        self.history: dict = {}  # slot -> the tokens it holds
        self.state: dict = {}  # slot -> the prompt it answers and what was written so far
        self.prompts: list = []

    def _ids(self, text):
        return self.tok.encode(text, bos=False, eos=False)

    def script(self, prompt):
        if any(prompt[i : i + len(self.result_header)] == self.result_header for i in range(len(prompt))):
            return self._ids(ANSWER) + [self.eot]  # a tool result came back: the final answer
        return self._ids(self.call) + [self.eom]

    def __call__(self, tokens, slots, positions, all_logits):
        logits = torch.full((len(tokens), 1, self.vocab), -30.0)
        for b, (row, slot, pos) in enumerate(zip(tokens, slots, positions)):
            seq = self.history.get(slot, [])[:pos] + list(row)
            self.history[slot] = seq
            state = self.state.get(slot)
            decoding = state and len(row) == 1 and pos == state["next"] and state["emitted"][-1:] == list(row)
            if not decoding:  # a prompt chunk: the answer starts after it
                state = self.state[slot] = {"prompt": seq, "emitted": []}
                self.prompts.append(seq)
            script = self.script(state["prompt"])
            done = len(state["emitted"])
            token = script[done] if done < len(script) else self.eot
            state["emitted"].append(token)
            state["next"] = pos + len(row)
            logits[b, -1, token] = 0.0
        return logits


@pytest.fixture
def scripted(build):
    def make(call=CALL):
        gen = build("llama3.1", max_seq_len=1024, max_batch_size=2)
        return gen, ScriptedModel(gen.tokenizer, gen.tokenizer.n_words, call)

    return make


def serve(gen, model):
    ctx = running_server(gen, model_id="llama-3.1-tiny")
    url, engine = ctx.__enter__()
    engine.steps._compute = model
    return ctx, openai.OpenAI(base_url=url, api_key="x", max_retries=0)


def test_a_call_its_result_and_the_answer_round_trip(scripted):
    gen, model = scripted()
    ctx, client = serve(gen, model)
    try:
        first = client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER])
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        result = {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "c": 24}'}
        messages = QUESTION + [choice.message.model_dump(exclude_none=True), result]
        second = client.chat.completions.create(model="llama-3.1-tiny", messages=messages, tools=[WEATHER])
        assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"
        assert second.choices[0].message.tool_calls is None
        # the tool definition reached the prompt, and the result went back as an ipython message
        text = gen.tokenizer.decode(model.prompts[-1])
        assert '"name": "get_weather"' in text and '<|start_header_id|>ipython<|end_header_id|>\n\n{"sky"' in text
        assert "Environment: ipython" in text
    finally:
        ctx.__exit__(None, None, None)


def test_streamed_calls_come_as_tool_call_deltas_then_the_answer_as_content(scripted):
    gen, model = scripted()
    ctx, client = serve(gen, model)
    try:
        chunks = list(client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER],
                                                     stream=True))  # fmt: skip
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
        assert calls[0].index == 0 and calls[0].id.startswith("call_") and calls[0].function.name == "get_weather"
        assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"city": "Paris"}
        assert all(not d.content for d in deltas)  # nothing of the call leaks as text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        messages = QUESTION + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0].id, "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}]  # fmt: skip
        again = list(client.chat.completions.create(model="llama-3.1-tiny", messages=messages, tools=[WEATHER],
                                                    stream=True))  # fmt: skip
        assert "".join(c.choices[0].delta.content or "" for c in again if c.choices) == ANSWER
        assert [c.choices[0].finish_reason for c in again if c.choices][-1] == "stop"
    finally:
        ctx.__exit__(None, None, None)


def test_parallel_tool_calls_false_keeps_the_first_call(scripted):
    gen, model = scripted(call=TWO_CALLS)
    ctx, client = serve(gen, model)
    try:
        both = client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER, TIME])
        assert [c.function.name for c in both.choices[0].message.tool_calls] == ["get_weather", "get_time"]
        one = client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER, TIME],
                                             parallel_tool_calls=False)  # fmt: skip
        assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    finally:
        ctx.__exit__(None, None, None)


def test_a_named_tool_choice_starts_the_call_for_the_model(scripted):
    gen, model = scripted(call='{"city": "Lyon"}}')  # what follows the forced start
    ctx, client = serve(gen, model)
    try:
        forced = {"type": "function", "function": {"name": "get_time"}}
        got = client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER, TIME],
                                             tool_choice=forced)  # fmt: skip
        (call,) = got.choices[0].message.tool_calls
        assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"city": "Lyon"}
        prompt = gen.tokenizer.decode(model.prompts[-1])
        assert prompt.endswith('<|start_header_id|>assistant<|end_header_id|>\n\n{"type": "function", "name": '
                               '"get_time", "parameters": ')  # fmt: skip
        none = client.chat.completions.create(model="llama-3.1-tiny", messages=QUESTION, tools=[WEATHER],
                                              tool_choice="none")  # fmt: skip
        assert "get_weather" not in gen.tokenizer.decode(model.prompts[-1])  # no tools offered
        assert none.choices[0].message.tool_calls is None
    finally:
        ctx.__exit__(None, None, None)


def test_bad_tool_requests_are_400s(scripted):
    gen, model = scripted()
    ctx, client = serve(gen, model)
    try:
        url = str(client.base_url).rstrip("/")
        body = {"messages": QUESTION, "tools": [WEATHER], "tool_choice": {"type": "function",
                                                                           "function": {"name": "nope"}}}  # fmt: skip
        bad = httpx.post(f"{url}/chat/completions", json=body, timeout=30).json()["error"]
        assert bad["param"] == "tool_choice"
        assert bad["message"] == "'tool_choice' names function 'nope', which is not among the tools ['get_weather']"
        body = {"messages": QUESTION, "tools": [WEATHER], "parallel_tool_calls": "yes"}
        assert httpx.post(f"{url}/chat/completions", json=body, timeout=30).json()["error"]["param"] == (
            "parallel_tool_calls")  # fmt: skip
    finally:
        ctx.__exit__(None, None, None)
