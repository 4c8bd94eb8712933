"""The prompt text that offers tools (llama.tools.prompt), against the prompts Meta shows in
meta-llama/llama-models, `models/llama3_1/prompt_format.md` (read from the installed wheel)."""

import datetime
import json
from pathlib import Path

import pytest

from llama.chat_format import encode_dialog
from llama.errors import ConfigError
from llama.tokenizer import Tokenizer
from llama.tools.prompt import check_tools, format_date, functions_text, system_text
from support.llama3_tokenizer import llama3_tokenizer_path

DAY = datetime.date(2024, 9, 21)  # the examples' "Today Date"
SONGS = {  # prompt_format.md's custom tool, as its <function> example writes it
    "name": "trending_songs",
    "description": "Returns the trending songs on a Music site",
    "parameters": {
        "genre": {"description": "The genre of the songs to return", "param_type": "str", "required": False},
        "n": {"description": "The number of songs to return", "param_type": "int", "required": True},
    },
}


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(llama3_tokenizer_path())


def example_prompt(containing: str) -> str:
    """The Input Prompt Format block of prompt_format.md that contains `containing`."""
    import llama_models

    text = (Path(llama_models.__file__).parent / "llama3_1" / "prompt_format.md").read_text()
    blocks = [b[1:] for b in text.split("```")[1::2]]  # each block starts after its opening line break
    (block,) = [b for b in blocks if b.startswith("<|begin_of_text|>") and containing in b]
    return block[: -len("\n")]  # the line break before the closing fence


def test_built_in_tools_go_into_the_system_message_as_prompt_format_md_shows(tok):
    dialog = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Search the web for the latest price of 1oz gold?"},
    ]
    ids = encode_dialog(tok, dialog, tools=["brave_search", "wolfram_alpha"], today=DAY)
    assert tok.decode(ids) == example_prompt("latest price of 1oz gold")


def test_function_tag_tools_go_into_a_user_message_as_prompt_format_md_shows(tok):
    dialog = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Use tools to get latest trending songs"},
    ]
    tools = [{"type": "function", "function": SONGS}]
    ids = encode_dialog(tok, dialog, tools=tools, tool_prompt_format="function_tag", today=DAY)
    assert tok.decode(ids) == example_prompt("Use the function 'trending_songs'")


def test_json_tools_system_message_and_description_follow_prompt_format_md(tok):
    # The example's schema is printed by llama-stack's template (some lists kept on one line), so its
    # text is not json.dumps' output; its system message and the text around the functions are matched.
    expected = example_prompt("Here is a list of functions in JSON format")
    spec = {"type": "function", "function": {"name": "trending_songs", "description": "d", "parameters": {}}}
    dialog = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}]
    text = tok.decode(encode_dialog(tok, dialog, tools=[spec], today=DAY))
    ours, theirs = text.split("<|eot_id|>"), expected.split("<|eot_id|>")
    assert ours[0] == theirs[0]  # the system message
    assert ours[1].split("{", 1)[0] == theirs[1].split("{", 1)[0]  # the user message, up to the functions
    assert ours[1].rsplit("}", 1)[1] == theirs[1].rsplit("}", 1)[1] == "\n\nReturn function calls in JSON format."
    assert ours[1].split("JSON format:\n", 1)[1].rsplit("\n\nReturn", 1)[0] == json.dumps(spec, indent=4)


def test_several_json_tools_are_listed_one_after_another():
    f, g = ({"name": n, "description": n.upper(), "parameters": {"type": "object"}} for n in ("f", "g"))
    text = functions_text([f, g])
    listed = text.split("JSON format:\n", 1)[1].rsplit("\n\nReturn", 1)[0]
    assert listed == json.dumps({"type": "function", "function": f}, indent=4) + "\n" + json.dumps(
        {"type": "function", "function": g}, indent=4
    )


def test_system_text_lines():
    assert system_text(["code_interpreter"], "", DAY) == (
        "Environment: ipython\n\nCutting Knowledge Date: December 2023\nToday Date: 21 September 2024\n"
    )
    assert system_text(["wolfram_alpha", "code_interpreter", "photogen"], "Be brief.", DAY) == (
        "Environment: ipython\nTools: wolfram_alpha, photogen\nCutting Knowledge Date: December 2023\n"
        "Today Date: 21 September 2024\n\nBe brief.\n"
    )
    assert format_date(datetime.date(2025, 1, 5)) == "05 January 2025"


def test_today_date_defaults_to_today(tok, monkeypatch):
    monkeypatch.setattr("llama.tools.prompt.today", lambda: datetime.date(2031, 12, 1))
    text = tok.decode(encode_dialog(tok, [{"role": "user", "content": "Hi"}], tools=["brave_search"]))
    assert "\nToday Date: 01 December 2031\n" in text


def test_check_tools_sorts_built_ins_and_functions():
    spec = {"type": "function", "function": {"name": "f"}}
    assert check_tools(["brave_search", spec, "brave_search"]) == (["brave_search"], [{"name": "f"}])


@pytest.mark.parametrize(
    "tools, message",
    [
        ("brave_search", "tools must be a list of tool names and function specs, got 'brave_search'"),
        (["google"], "tool 0: unknown built-in tool 'google'; use one of ('brave_search', 'wolfram_alpha', "),
        ([{"name": "f"}], "tool 0: expected a built-in tool name or {'type': 'function', 'function': {...}}, got"),
        ([{"type": "function", "function": {"description": "d"}}], "tool 0: the function needs a non-empty str 'name'"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "tool 0 (f): 'parameters' must be a"),
    ],
)
def test_bad_tool_definitions_are_refused(tools, message):
    with pytest.raises(ConfigError) as err:
        check_tools(tools)
    assert str(err.value).startswith(message)
