"""Llama.chat_completion(dialogs, tools=...) on a tiny random Llama 3.1 model: the decode is scripted
(the model's forward replaced by one that writes chosen tokens) so that the answers are tool calls."""

import datetime

import pytest
import torch

from llama.chat_format import encode_dialog
from llama.errors import ConfigError
from llama.tools.prompt import system_text

DAY = datetime.date(2024, 9, 21)
EOS, EOM, EOT, PYTHON_TAG = 128001, 128008, 128009, 128010
SEARCH = ["brave_search", "wolfram_alpha"]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK = [{"role": "user", "content": "What is the price of gold?"}]


@pytest.fixture(scope="module")
def llama(build):
    return build("llama3.1", max_seq_len=512, max_batch_size=2)


@pytest.fixture(autouse=True)
def fixed_day(monkeypatch):
    monkeypatch.setattr("llama.tools.prompt.today", lambda: DAY)


class Script:
    """Replaces llama's forward: after its prompt, row i of the dialogs writes answers[i] (token ids), then eot."""

    def __init__(self, llama, monkeypatch, answers):
        self.llama, self.answers, self.prompts, self.batch = llama, list(answers), [], []
        decode = llama.decode

        def scripted_decode(prompt_tokens, *args, **kwargs):
            self.batch = [(len(p), self.answers[len(self.prompts) + k]) for k, p in enumerate(prompt_tokens)]
            self.prompts += prompt_tokens
            return decode(prompt_tokens, *args, **kwargs)

        monkeypatch.setattr(llama, "decode", scripted_decode)
        monkeypatch.setattr(llama, "_forward", self.forward)

    def forward(self, tokens, start_pos, last_only=False):
        bsz, seqlen = tokens.shape
        logits = torch.zeros(bsz, seqlen, self.llama.tokenizer.n_words)
        for b, (prompt_len, answer) in enumerate(self.batch):
            for i in range(seqlen):
                k = start_pos + i + 1 - prompt_len  # the answer's token predicted at this position
                logits[b, i, answer[k] if 0 <= k < len(answer) else EOT] = 10.0
        return logits[:, -1:] if last_only else logits


def text(llama, s):
    return llama.tokenizer.encode(s, bos=False, eos=False)


def without_ids(generation):
    assert all(isinstance(c["call_id"], str) and c["call_id"] for c in generation["tool_calls"])
    return dict(
        generation, tool_calls=[{k: v for k, v in c.items() if k != "call_id"} for c in generation["tool_calls"]]
    )


def test_a_built_in_tool_call(llama, monkeypatch):
    script = Script(llama, monkeypatch, [[PYTHON_TAG] + text(llama, 'brave_search.call(query="gold price")') + [EOM]])
    (pred,) = llama.chat_completion([ASK], temperature=0, tools=SEARCH)
    assert list(pred) == ["generation"]
    assert without_ids(pred["generation"]) == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "gold price"}}],
        "stop_reason": "end_of_message",
    }
    assert script.prompts == [encode_dialog(llama.tokenizer, ASK, tools=SEARCH, today=DAY)]
    assert "Environment: ipython\nTools: brave_search, wolfram_alpha\n" in llama.tokenizer.decode(script.prompts[0])


def test_code_interpreter_and_custom_calls(llama, monkeypatch):
    code = "print(sum(range(10)))"
    json_call = '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}'
    Script(
        llama,
        monkeypatch,
        [
            [PYTHON_TAG] + text(llama, code) + [EOM],
            [PYTHON_TAG] + text(llama, json_call) + [EOM],
            text(llama, '<function=get_weather>{"city": "Oslo"}</function>') + [EOT],
        ],
    )
    preds = llama.chat_completion([ASK] * 3, temperature=0, tools=["code_interpreter", WEATHER])  # two batches
    assert [without_ids(p["generation"])["tool_calls"] for p in preds] == [
        [{"tool_name": "code_interpreter", "arguments": {"code": code}}],
        [{"tool_name": "get_weather", "arguments": {"city": "Paris"}}],
        [{"tool_name": "get_weather", "arguments": {"city": "Oslo"}}],
    ]
    assert [p["generation"]["stop_reason"] for p in preds] == ["end_of_message", "end_of_message", "end_of_turn"]
    assert all(p["generation"]["content"] == "" for p in preds)


@pytest.mark.parametrize(
    "answer, max_gen_len, stop_reason",
    [
        ([*range(791, 796), EOT], None, "end_of_turn"),
        ([*range(791, 796), EOS], None, "end_of_turn"),  # <|end_of_text|>: the model ended, too
        ([*range(791, 796), EOM], None, "end_of_message"),
        ([*range(791, 796), EOT], 3, "out_of_tokens"),
    ],
)
def test_a_plain_answer_and_its_stop_reason(llama, monkeypatch, answer, max_gen_len, stop_reason):
    Script(llama, monkeypatch, [answer])
    (pred,) = llama.chat_completion([ASK], temperature=0, max_gen_len=max_gen_len, tools=SEARCH)
    written = answer[:-1] if max_gen_len is None else answer[:max_gen_len]
    assert pred["generation"] == {
        "role": "assistant",
        "content": llama.tokenizer.decode(written).strip(" "),
        "tool_calls": [],
        "stop_reason": stop_reason,
    }


def test_a_round_trip_feeds_the_call_and_its_result_back(llama, monkeypatch):
    from llama_models.datatypes import RawMessage, StopReason, ToolCall
    from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    from support.llama3_tokenizer import llama3_tokenizer_path

    call = 'wolfram_alpha.call(query="100th decimal of pi")'
    final = "The 100th decimal of pi is 7."
    script = Script(llama, monkeypatch, [[PYTHON_TAG] + text(llama, call) + [EOM], text(llama, final) + [EOT]])
    dialog = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the 100th decimal of pi?"},
    ]
    (first,) = llama.chat_completion([dialog], temperature=0, tools=SEARCH)
    dialog += [first["generation"], {"role": "tool", "content": '{"result": "7"}'}]
    (second,) = llama.chat_completion([dialog], temperature=0, tools=SEARCH)
    assert second["generation"] == {
        "role": "assistant",
        "content": final,
        "tool_calls": [],
        "stop_reason": "end_of_turn",
    }

    meta = MetaChatFormat(MetaTokenizer(llama3_tokenizer_path()))
    raw = [
        RawMessage(role="system", content=system_text(SEARCH, "Be brief.", DAY)),
        RawMessage(role="user", content="What is the 100th decimal of pi?"),
        RawMessage(
            role="assistant",
            content="",
            stop_reason=StopReason.end_of_message,
            tool_calls=[ToolCall(call_id="x", tool_name="wolfram_alpha", arguments={"query": "100th decimal of pi"})],
        ),
        RawMessage(role="tool", content='{"result": "7"}'),
    ]
    assert script.prompts[1] == meta.encode_dialog_prompt(raw).tokens


def test_logprobs_with_tools(llama, monkeypatch):
    Script(llama, monkeypatch, [text(llama, "Gold is up.") + [EOT]])
    (pred,) = llama.chat_completion([ASK], temperature=0, logprobs=True, tools=SEARCH)
    assert list(pred) == ["generation", "tokens", "logprobs"]
    assert pred["tokens"] == [llama.tokenizer.decode([t]) for t in text(llama, "Gold is up.")]
    assert len(pred["logprobs"]) == len(pred["tokens"]) and all(lp <= 0 for lp in pred["logprobs"])


@pytest.mark.parametrize("tools", [None, []])
def test_without_tools_nothing_changes(llama, monkeypatch, tools):
    script = Script(llama, monkeypatch, [text(llama, " Gold is up. ") + [EOT]])
    (pred,) = llama.chat_completion([ASK], temperature=0, tools=tools)
    assert pred == {"generation": {"role": "assistant", "content": " Gold is up. "}}
    assert script.prompts == [encode_dialog(llama.tokenizer, ASK)]


def test_rows_of_one_batch_end_each_its_own_way(llama, monkeypatch):
    long_ask = [{"role": "user", "content": "What is the price of gold, in euros, today, and a week ago?"}]
    Script(llama, monkeypatch, [[791, EOM], [*range(791, 801), EOT]])
    preds = llama.chat_completion([ASK, long_ask], temperature=0, max_gen_len=5, tools=SEARCH)
    assert [p["generation"]["stop_reason"] for p in preds] == ["end_of_message", "out_of_tokens"]
    assert [p["generation"]["content"] for p in preds] == [
        llama.tokenizer.decode([791]),
        llama.tokenizer.decode(list(range(791, 796))),
    ]


def test_the_real_model_cuts_rows_where_generate_does(llama):
    tools = ["brave_search", WEATHER]
    dialogs = [ASK, [{"role": "user", "content": "Weather in Oslo, please, today and tomorrow?"}]]
    preds = llama.chat_completion(dialogs, temperature=0, max_gen_len=6, tools=tools)
    prompts = [encode_dialog(llama.tokenizer, d, tools=tools, today=DAY) for d in dialogs]
    tokens, _ = llama.generate(prompts, max_gen_len=6, temperature=0)
    cut, _, stops = llama._generate_with_stops(prompts, 6, 0, 0.9, False)
    assert cut == tokens
    for pred, t, stop in zip(preds, tokens, stops):
        assert (stop is None) == (len(t) == 6) and (stop is None or stop in llama.stop_tokens)
        generation = pred["generation"]
        assert set(generation) == {"role", "content", "tool_calls", "stop_reason"}
        assert generation["stop_reason"] == {None: "out_of_tokens", EOM: "end_of_message"}.get(stop, "end_of_turn")
        if not generation["tool_calls"]:
            assert generation["content"] == llama.tokenizer.decode(t).strip(" ")


def test_llama2_and_llama3_0_models_refuse_tools(build):
    with pytest.raises(ConfigError) as err:
        build("mha").chat_completion([ASK], tools=SEARCH)
    assert str(err.value) == (
        "tools need a Llama 3.1+ model; this is a Llama 2 model (SentencePiece tokenizer), whose [INST] chat "
        "format has no tool calling"
    )
    with pytest.raises(ConfigError) as err:
        build("llama3").chat_completion([ASK], tools=SEARCH)
    assert str(err.value) == (
        'tools need a Llama 3.1+ model (params.json with "use_scaled_rope": true); this is a Llama 3.0 model, '
        "which was not trained for tool calling"
    )
