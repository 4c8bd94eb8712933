"""Tool dialogs encode to exactly the tokens of llama-models 0.3.0's encoder (meta-llama/llama-models,
`models/llama3/chat_format.py` `ChatFormat.encode_dialog_prompt`), given the same system text."""

import datetime

import pytest

from llama.chat_format import ChatFormat, encode_dialog
from llama.errors import ConfigError
from llama.tokenizer import Tokenizer
from llama.tools.prompt import functions_text, system_text
from support.llama3_tokenizer import llama3_tokenizer_path

DAY = datetime.date(2024, 9, 21)
PYTHON_TAG, EOM, EOT = 128010, 128008, 128009
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(llama3_tokenizer_path())


@pytest.fixture(scope="module")
def theirs():
    from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    return MetaChatFormat(MetaTokenizer(llama3_tokenizer_path()))


def raw_messages(messages):
    """Our messages as llama-models RawMessages (its role for tool results is "tool")."""
    from llama_models.datatypes import RawMessage, StopReason, ToolCall

    out = []
    for m in messages:
        calls = [
            ToolCall(call_id="id", tool_name=c["tool_name"], arguments=c["arguments"]) for c in m.get("tool_calls", [])
        ]
        stop = StopReason(m["stop_reason"]) if "stop_reason" in m else None
        role = "tool" if m["role"] == "ipython" else m["role"]
        out.append(RawMessage(role=role, content=m["content"], tool_calls=calls, stop_reason=stop))
    return out


def llama_models_tokens(theirs, messages, tool_prompt_format="json"):
    from llama_models.datatypes import ToolPromptFormat

    return theirs.encode_dialog_prompt(raw_messages(messages), ToolPromptFormat(tool_prompt_format)).tokens


def system(builtins, text=""):
    return {"role": "system", "content": system_text(builtins, text, DAY)}


def test_built_in_tools_system_prompt(tok, theirs):
    dialog = [{"role": "system", "content": " Answer briefly. "}, {"role": "user", "content": " What is new?\n"}]
    ids = encode_dialog(tok, dialog, tools=["brave_search", "wolfram_alpha", "code_interpreter"], today=DAY)
    expected = [system(["brave_search", "wolfram_alpha"], " Answer briefly. "), dialog[1]]  # content as given
    assert ids == llama_models_tokens(theirs, expected)


def test_code_interpreter_alone_is_environment_ipython(tok, theirs):
    dialog = [{"role": "user", "content": "Is 7 prime?"}]
    ids = encode_dialog(tok, dialog, tools=["code_interpreter"], today=DAY)
    assert ids == llama_models_tokens(theirs, [system([])] + dialog)
    assert "Tools:" not in tok.decode(ids)


@pytest.mark.parametrize("tool_prompt_format", ["json", "function_tag"])
def test_custom_tools_are_described_in_a_user_message(tok, theirs, tool_prompt_format):
    dialog = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Weather in Paris?"}]
    tools = ["brave_search", {"type": "function", "function": WEATHER}]
    ids = encode_dialog(tok, dialog, tools=tools, tool_prompt_format=tool_prompt_format, today=DAY)
    description = {"role": "user", "content": functions_text([WEATHER], tool_prompt_format)}
    assert ids == llama_models_tokens(theirs, [system(["brave_search"], "Be kind."), description, dialog[1]])


CALLS = {
    "brave_search": {"tool_name": "brave_search", "arguments": {"query": "latest price of 1oz gold"}},
    "wolfram_alpha": {"tool_name": "wolfram_alpha", "arguments": {"query": "100th decimal of pi"}},
    "photogen": {"tool_name": "photogen", "arguments": {"query": "a cat"}},
    "code_interpreter": {"tool_name": "code_interpreter", "arguments": {"code": "def f(n):\n    return n\n\nf(7)"}},
    "custom": {"tool_name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2], "metric": True}},
}


@pytest.mark.parametrize("tool_prompt_format", ["json", "function_tag"])
@pytest.mark.parametrize("stop_reason", ["end_of_message", "end_of_turn", "out_of_tokens"])
@pytest.mark.parametrize("call", list(CALLS))
def test_an_assistant_tool_call_and_its_result(tok, theirs, call, stop_reason, tool_prompt_format):
    dialog = [
        {"role": "user", "content": "Please look it up."},
        {"role": "assistant", "content": "", "tool_calls": [CALLS[call]], "stop_reason": stop_reason},
        {"role": "ipython", "content": '{"result": 7}'},
    ]
    ids = encode_dialog(tok, dialog, tool_prompt_format=tool_prompt_format)  # tool_calls alone make a tool dialog
    assert ids == llama_models_tokens(theirs, dialog, tool_prompt_format)
    assistant = ids[ids.index(78191) + 3 :]  # after the assistant header
    assert (assistant[0] == PYTHON_TAG) == (call == "code_interpreter")
    end = assistant.index(EOM) if stop_reason == "end_of_message" else assistant.index(EOT)
    assert EOT not in assistant[:end] and EOM not in assistant[:end]
    text = tok.decode(assistant[:end])
    spelled = {
        "brave_search": 'brave_search.call(query="latest price of 1oz gold")',
        "wolfram_alpha": 'wolfram_alpha.call(query="100th decimal of pi")',
        "photogen": 'photogen.call(query="a cat")',
        "code_interpreter": "<|python_tag|>def f(n):\n    return n\n\nf(7)",
        "custom": (
            '{"type": "function", "name": "get_weather", '
            '"parameters": {"city": "Paris", "days": [1, 2], "metric": true}}'
            if tool_prompt_format == "json"
            else '<function=get_weather>{"city": "Paris", "days": [1, 2], "metric": true}</function>'
        ),
    }
    assert text == spelled[call]


def test_content_and_several_calls_are_encoded_piece_by_piece(tok, theirs):
    dialog = [
        {"role": "user", "content": "Both, please."},
        {
            "role": "assistant",
            "content": "Looking up both. ",
            "tool_calls": [CALLS["custom"], {"tool_name": "get_time", "arguments": {"zone": "CET"}}],
            "stop_reason": "end_of_message",
        },
    ]
    ids = encode_dialog(tok, dialog, tools=[{"type": "function", "function": WEATHER}], today=DAY)
    description = {"role": "user", "content": functions_text([WEATHER])}
    assert ids == llama_models_tokens(theirs, [system([]), description] + dialog)
    piece = tok.encode("Looking up both. ", bos=False, eos=False)
    assert ids[ids.index(78191) + 3 :][: len(piece)] == piece


def test_tool_is_a_synonym_of_ipython(tok, theirs):
    call = {"role": "assistant", "content": "", "tool_calls": [CALLS["brave_search"]], "stop_reason": "end_of_message"}
    dialog = [{"role": "user", "content": "Gold?"}, call, {"role": "tool", "content": " 2,650 USD \n"}]
    ids = encode_dialog(tok, dialog, tools=["brave_search"], today=DAY)
    ipython = dialog[:2] + [{"role": "ipython", "content": " 2,650 USD \n"}]
    assert ids == encode_dialog(tok, ipython, tools=["brave_search"], today=DAY)
    assert ids == llama_models_tokens(theirs, [system(["brave_search"])] + ipython)
    assert tok.decode(ids).count("<|start_header_id|>ipython<|end_header_id|>\n\n 2,650 USD \n<|eot_id|>") == 1


def test_a_full_round_trip(tok, theirs):
    # prompt_format.md's "Built-in tools full interaction", then a follow-up turn.
    result = '\n{\n    "queryresult": {\n        "success": true,\n        "pods": [{"plaintext": "7"}]\n    }\n}\n'
    dialog = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the 100th decimal of pi?"},
        {"role": "assistant", "content": "", "tool_calls": [CALLS["wolfram_alpha"]], "stop_reason": "end_of_message"},
        {"role": "ipython", "content": result},
        {
            "role": "assistant",
            "content": "The 100th decimal of pi is 7.",
            "tool_calls": [],
            "stop_reason": "end_of_turn",
        },
        {"role": "user", "content": "And the 101st?"},
    ]
    ids = encode_dialog(tok, dialog, tools=["brave_search", "wolfram_alpha"], today=DAY)
    expected = [system(["brave_search", "wolfram_alpha"], "You are a helpful assistant.")] + dialog[1:]
    assert ids == llama_models_tokens(theirs, expected)
    assert ChatFormat(tok).encode_tool_dialog_prompt(dialog, ["brave_search", "wolfram_alpha"], today=DAY) == ids


def test_openai_style_tool_calls_encode_alike(tok):
    ours = {"role": "assistant", "content": "", "tool_calls": [dict(CALLS["custom"], call_id="c1")]}
    openai = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": [1, 2], "metric": true}'},
            }
        ],
    }
    user = {"role": "user", "content": "Weather?"}
    assert encode_dialog(tok, [user, ours]) == encode_dialog(tok, [user, openai])


def test_dialogs_without_tools_keep_the_stripped_llama3_layout(tok, theirs):
    dialog = [{"role": "user", "content": " hi \n"}, {"role": "ipython", "content": " 42 "}]
    legacy = ChatFormat(tok).encode_dialog_prompt(dialog)
    assert encode_dialog(tok, dialog) == encode_dialog(tok, dialog, tools=[]) == legacy
    assert tok.decode(legacy).count("\n\nhi<|eot_id|>") == 1
    # ... and the same messages in a tool dialog are kept as given, as llama-models does
    tooled = encode_dialog(tok, dialog, tools=["code_interpreter"], today=DAY)
    assert tooled == llama_models_tokens(theirs, [system([])] + dialog)
    stopped = dialog + [{"role": "assistant", "content": " ok ", "stop_reason": "end_of_turn"}]
    assert encode_dialog(tok, stopped) == llama_models_tokens(theirs, stopped)


@pytest.mark.parametrize(
    "message, error",
    [
        (
            {"role": "user", "content": "x", "tool_calls": [CALLS["custom"]]},
            "dialog 4, message 2: only assistant messages carry tool_calls, not role 'user'",
        ),
        (
            {"role": "assistant", "content": "", "stop_reason": "done"},
            "dialog 4, message 2: unknown stop_reason 'done'; use one of ('end_of_turn', 'end_of_message', "
            "'out_of_tokens')",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": {"tool_name": "f"}},
            "dialog 4, message 2: tool_calls must be a list, got {'tool_name': 'f'}",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]},
            "dialog 4, message 2, tool call 1: the tool name must be a non-empty str, got None",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"tool_name": "f", "arguments": [1]}]},
            "dialog 4, message 2, tool call 1: arguments must be a dict (a JSON object), got [1]",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]},
            "dialog 4, message 2, tool call 1: 'arguments' is not valid JSON (",
        ),
        (
            {"role": "assistant", "content": "", "tool_calls": [{"tool_name": "brave_search", "arguments": {}}]},
            "a brave_search call needs a str argument 'query', got {}",
        ),
    ],
)
def test_malformed_tool_messages(tok, message, error):
    with pytest.raises(ConfigError) as err:
        encode_dialog(tok, [{"role": "user", "content": "hi"}, message], index=3)
    assert str(err.value).startswith(error)


def test_role_tool_needs_a_tool_dialog(tok):
    dialog = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    with pytest.raises(
        ConfigError, match=r"unknown role 'tool'; use one of \('system', 'user', 'assistant', 'ipython'\)$"
    ):
        encode_dialog(tok, dialog)
    assert encode_dialog(tok, dialog, tools=["code_interpreter"], today=DAY)[-4:] == [128006, 78191, 128007, 271]


def test_an_unknown_tool_prompt_format_is_refused(tok):
    with pytest.raises(ConfigError, match=r"^unknown tool_prompt_format 'xml'; use one of \('json', 'function_tag'\)$"):
        encode_dialog(tok, [{"role": "user", "content": "hi"}], tools=["brave_search"], tool_prompt_format="xml")


def test_llama2_has_no_tools(tokenizer_path):
    with pytest.raises(ConfigError) as err:
        encode_dialog(Tokenizer(tokenizer_path), [{"role": "user", "content": "hi"}], tools=["brave_search"])
    assert str(err.value) == (
        "tools need a Llama 3.1+ model; this is a Llama 2 model (SentencePiece tokenizer), whose [INST] chat "
        "format has no tool calling"
    )
