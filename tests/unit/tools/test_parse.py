"""Generated text -> tool calls (llama.tools.parse).

The first three groups restate every case of llama-models 0.3.0's own parser tests
(meta-llama/llama-models, `models/llama3/tests/api/test_tool_utils.py`) in this package's API:
`ToolUtils.maybe_extract_custom_tool_call` -> parse_custom_calls, `is_valid_python_list(s)` ->
`parse_python_list(s) is not None`, `parse_python_list_for_function_calls` -> parse_python_list.
Then the cases where llama-models' parser is wrong and this one is not, and whole messages.
"""

import pytest

from llama.tools.calls import ToolCall
from llama.tools.parse import (
    parse_assistant,
    parse_builtin_call,
    parse_custom_calls,
    parse_function_tags,
    parse_json_call,
    parse_python_list,
)
from support.llama3_tokenizer import llama3_tokenizer_path


@pytest.fixture(scope="module")
def theirs():
    from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    return MetaChatFormat(MetaTokenizer(llama3_tokenizer_path()))


# --- llama-models' test_tool_utils.py, TestToolUtils ---------------------------------------------


def test_maybe_extract_custom_tool_call():
    single_tool_call = """<function=getWeather>{"location":"New York","date":"2023-08-05"}"""
    assert parse_custom_calls(single_tool_call) == [("getWeather", {"location": "New York", "date": "2023-08-05"})]


# --- TestPythonListCheck ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, valid",
    [
        ('[get_boiling_point(liquid_name="water", celcius=True)]', True),  # single function call
        (
            '[get_boiling_point(liquid_name="water", celcius=True), get_melting_point(substance="ice", kelvin=False)]',
            True,
        ),  # multiple function calls
        ("[]", False),  # empty list
        ('[get_boiling_point(liquid_name="water"), 42]', False),  # non-function call
        ('[get_boiling_point("water", True)]', False),  # positional args
        ('[[get_boiling_point(liquid_name="water")]]', False),  # nested list
        ('{"func": get_boiling_point(liquid_name="water")}', False),  # dict
        ('[get_boiling_point(liquid_name="water", celcius=True', False),  # syntax: missing closing bracket
        ('[get_boiling_point(liquid_name="water", celcius=True, precise=False)]', True),  # boolean args
        ("[calculate_volume(radius=5.2, height=10)]", True),  # numeric args
        ('get_boiling_point(liquid_name="water")', False),  # bare function call
        ('[(get_boiling_point(liquid_name="water"),)]', False),  # extra char function call
    ],
)
def test_python_list_check(text, valid):
    assert (parse_python_list(text) is not None) is valid


# --- TestParsePythonList ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            '[get_boiling_point(liquid_name="water", celcius=True)]',
            [("get_boiling_point", {"liquid_name": "water", "celcius": True})],
        ),
        (
            '[get_boiling_point(liquid_name="water", celcius=True), get_melting_point(substance="ice", kelvin=False)]',
            [
                ("get_boiling_point", {"liquid_name": "water", "celcius": True}),
                ("get_melting_point", {"substance": "ice", "kelvin": False}),
            ],
        ),
        ("[calculate_volume(radius=5.2, height=10)]", [("calculate_volume", {"radius": 5.2, "height": 10})]),
        (
            '[process_data(name="sample", value=42, active=True, ratio=3.14)]',
            [("process_data", {"name": "sample", "value": 42, "active": True, "ratio": 3.14})],
        ),
        ("[initialize()]", [("initialize", {})]),
        (
            '[analyze_text(content="Hello, world!", language="en")]',
            [("analyze_text", {"content": "Hello, world!", "language": "en"})],
        ),
        (
            '[get_boiling_point(liquid={"name":"water", "color":"translucent"}), '
            'convert_temperature(value=[100, 101], from_unit="C", to_unit="F")]',
            [
                ("get_boiling_point", {"liquid": {"name": "water", "color": "translucent"}}),
                ("convert_temperature", {"value": [100, 101], "from_unit": "C", "to_unit": "F"}),
            ],
        ),
    ],
)
def test_parse_python_list(text, expected):
    assert parse_python_list(text) == expected


# --- where llama-models' parser is wrong -----------------------------------------------------------


def llama_models_custom_call(text):
    from llama_models.llama3.tool_utils import ToolUtils

    return ToolUtils.maybe_extract_custom_tool_call(text)  # prints its exception when it fails


def test_function_tag_arguments_may_nest_objects():
    text = '<function=book>{"room": {"beds": 2, "view": "sea"}, "nights": 3}</function>'
    assert parse_function_tags(text) == [("book", {"room": {"beds": 2, "view": "sea"}, "nights": 3})]
    # llama-models' `(?P<args>{.*?})` stops at the first "}": '{"room": {"beds": 2, "view": "sea"}', not JSON
    assert llama_models_custom_call(text) is None


def test_function_tag_arguments_may_hold_apostrophes():
    text = """<function=translate>{"text": "it's late", "to": "fr"}</function>"""
    assert parse_function_tags(text) == [("translate", {"text": "it's late", "to": "fr"})]
    # llama-models first replaces every ' by ": '{"text": "it"s late", ...}', not JSON
    assert llama_models_custom_call(text) is None
    # a Python dict literal, which that replace was for, still works, with an apostrophe in a value too
    assert parse_function_tags("""<function=f>{'text': "it's", 'n': 1}</function>""") == [
        ("f", {"text": "it's", "n": 1})
    ]
    assert parse_function_tags("<function=f>{'city': 'Paris'}</function>") == [("f", {"city": "Paris"})]


def test_json_calls_with_apostrophes_parse_in_both():
    # The JSON path never had the replace: llama-models gets this right too.
    text = """{"name": "f", "parameters": {"text": "it's"}}"""
    assert parse_json_call(text) == ("f", {"text": "it's"}) == llama_models_custom_call(text)


def test_a_json_record_with_a_name_is_not_a_call():
    # llama-models takes any object with a "name" for a call (and raises KeyError without "parameters").
    assert parse_json_call('{"name": "Ada Lovelace", "born": 1815}') is None
    assert parse_json_call('{"type": "function", "name": "now"}') == ("now", {})
    assert parse_json_call('{"name": "now", "parameters": {}}') == ("now", {})
    assert parse_json_call('{"name": "f", "parameters": [1]}') is None
    assert parse_json_call('["name"]') is None and parse_json_call("not json") is None


def test_a_python_list_keeps_every_call_and_refuses_non_literals():
    parsed = parse_assistant('[get_time(zone="CET"), get_weather(city="Paris")]')
    assert [(c.tool_name, c.arguments) for c in parsed.tool_calls] == [
        ("get_time", {"zone": "CET"}),
        ("get_weather", {"city": "Paris"}),
    ]  # llama-models keeps the first only ("FIXME: Enable multiple tool calls")
    assert parse_python_list("[f(x=y)]") is None  # llama-models: is_valid says yes, then parsing raises
    assert parse_python_list("[f(**kw)]") is None


def test_several_function_tags():
    text = '<function=a>{"x": 1}</function><function=b>{"y": "}"}</function>'
    assert parse_function_tags(text) == [("a", {"x": 1}), ("b", {"y": "}"})]
    assert parse_function_tags('<function=a>{"x": </function>') is None


# --- whole assistant messages ----------------------------------------------------------------------


def calls(text):
    parsed = parse_assistant(text)
    return parsed.content, [(c.tool_name, c.arguments) for c in parsed.tool_calls], parsed.stop_reason


@pytest.mark.parametrize(
    "text, expected",
    [
        # prompt_format.md's model responses
        (
            '<|python_tag|>brave_search.call(query="latest price of 1oz gold")',
            ("", [("brave_search", {"query": "latest price of 1oz gold"})], None),
        ),
        (
            "<|python_tag|>def is_prime(n):\n    return n > 1\n\nprint(is_prime(7))",
            ("", [("code_interpreter", {"code": "def is_prime(n):\n    return n > 1\n\nprint(is_prime(7))"})], None),
        ),
        (
            '<|python_tag|>{\n    "type": "function",\n    "name": "trending_songs",\n    "parameters": {\n'
            '        "n": "10",\n        "genre": "all"\n    }\n}<|eom_id|>',
            ("", [("trending_songs", {"n": "10", "genre": "all"})], "end_of_message"),
        ),
        (
            '<function=trending_songs>{"n": 10}</function><|eot_id|>',
            ("", [("trending_songs", {"n": 10})], "end_of_turn"),
        ),
        ("The 100th decimal of pi is 7.<|eot_id|>", ("The 100th decimal of pi is 7.", [], "end_of_turn")),
        # no tags: a plain answer, spaces around it dropped as llama-models does
        ("  Paris is sunny.\n ", ("Paris is sunny.\n", [], None)),
        ("<|start_header_id|>assistant<|end_header_id|>\n\nHi", ("Hi", [], None)),
        # a custom-format call of a built-in tool is that tool's call
        (
            '{"type": "function", "name": "brave_search", "parameters": {"q": "gold"}}',
            ("", [("brave_search", {"query": "gold"})], None),
        ),
        (
            '{"name": "wolfram_alpha", "parameters": {"x": 1, "query": "pi"}}',
            ("", [("wolfram_alpha", {"query": "pi"})], None),
        ),
        (
            '{"name": "code_interpreter", "parameters": {"src": "print(1)"}}',
            ("", [("code_interpreter", {"code": "print(1)"})], None),
        ),
        ('<|python_tag|>{"name": "brave_search", "parameters": {}}', ("", [("brave_search", {})], None)),
    ],
)
def test_parse_assistant(text, expected):
    assert calls(text) == expected


def test_each_call_gets_its_own_id():
    first, second = (parse_assistant('brave_search.call(query="x")').tool_calls[0] for _ in range(2))
    assert isinstance(first, ToolCall) and first.call_id != second.call_id and len(first.call_id) == 36


def test_builtin_calls_are_found_as_llama_models_finds_them():
    assert parse_builtin_call('Let me search. wolfram_alpha.call(query="2+2") now') == (
        "wolfram_alpha",
        {"query": "2+2"},
    )
    assert parse_builtin_call("brave_search.call(query=x)") is None


@pytest.mark.parametrize(
    "text",
    [
        '<|python_tag|>brave_search.call(query="latest price of 1oz gold")',
        '<|python_tag|>wolfram_alpha.call(query="100th decimal of pi")<|eom_id|>',
        "<|python_tag|>print(1 + 1)",
        '{"type": "function", "name": "trending_songs", "parameters": {"n": "10"}}',
        '<function=getWeather>{"location":"New York","date":"2023-08-05"}</function><|eot_id|>',
        '{"name": "brave_search", "parameters": {"q": "gold"}}',
        "[get_time(zone='CET')]",
        " The answer is 7. ",
    ],
)
def test_agrees_with_llama_models_where_it_is_right(theirs, text):
    from llama_models.datatypes import StopReason

    meta = theirs.decode_assistant_message_from_content(text, StopReason.out_of_tokens)
    meta_calls = [(getattr(c.tool_name, "value", c.tool_name), c.arguments) for c in meta.tool_calls]
    content, ours, stop = calls(text)
    assert (content, ours) == (meta.content, meta_calls)
    assert (stop or "out_of_tokens") == meta.stop_reason.value
