"""Generated assistant text -> its tool calls, in the order llama-models 0.3.0 tries the formats
(meta-llama/llama-models, `models/llama3/chat_format.py` `decode_assistant_message_from_content`,
`models/llama3/tool_utils.py`): custom calls (`<function=name>{...}`, then a JSON object, then a Python
list of calls), then a built-in `tool.call(query="...")`, then, after `<|python_tag|>`, code for
code_interpreter. Where llama-models' parser is wrong this one is not (see each function).
"""

import ast
import json
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from .calls import BUILTIN_TOOLS, ToolCall

Call = Tuple[str, Dict[str, Any]]  # (tool name, arguments)

PYTHON_TAG, EOT, EOM = "<|python_tag|>", "<|eot_id|>", "<|eom_id|>"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"
BUILTIN_CALL = re.compile(r'\b(?P<tool_name>\w+)\.call\(query="(?P<query>[^"]*)"\)')
FUNCTION_TAG = re.compile(r"<function=(?P<name>[^>]+)>\s*")
_JSON = json.JSONDecoder()
_AST_ERRORS = (SyntaxError, ValueError, TypeError, RecursionError, MemoryError)


class ParsedMessage(NamedTuple):
    content: str  # "" when the message is a tool call
    tool_calls: List[ToolCall]
    stop_reason: Optional[str]  # from a trailing "<|eot_id|>" / "<|eom_id|>" in the text, else None


def parse_builtin_call(text: str) -> Optional[Call]:
    """The first `name.call(query="...")` anywhere in the text -> (name, {"query": ...})."""
    match = BUILTIN_CALL.search(text)
    return (match.group("tool_name"), {"query": match.group("query")}) if match else None


def _dict_literal(text: str) -> Optional[Dict[str, Any]]:
    """A Python dict literal ({'a': 'b'}), which models write for JSON now and then."""
    try:
        value = ast.literal_eval(text)
    except _AST_ERRORS:
        return None
    return value if isinstance(value, dict) else None


def parse_function_tags(text: str) -> Optional[List[Call]]:
    """Every `<function=name>{...}</function>` (the closing tag optional) -> [(name, arguments)], or None.

    The arguments are read as one whole JSON object, however deeply nested (llama-models' regex stops
    at the first `}`), else as a Python dict literal up to `</function>` (llama-models turns every `'`
    into `"` first, which breaks apostrophes inside values: "it's")."""
    calls: List[Call] = []
    for match in FUNCTION_TAG.finditer(text):
        arguments: Optional[Dict[str, Any]] = None
        try:
            value, _ = _JSON.raw_decode(text, match.end())
            arguments = value if isinstance(value, dict) else None
        except json.JSONDecodeError:
            arguments = _dict_literal(text[match.end() :].split("</function>", 1)[0].strip())
        if arguments is not None:
            calls.append((match.group("name").strip(), arguments))
    return calls or None


def parse_json_call(text: str) -> Optional[Call]:
    """A message that is one JSON object {"type": "function", "name": ..., "parameters": {...}} -> the call.

    It needs a str "name" and either "type": "function" or "parameters"; llama-models takes any object
    with a "name" (then fails with KeyError on a missing "parameters"), so an answer that is merely a
    JSON record with a name would become a call."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if value.get("type") != "function" and "parameters" not in value:
        return None
    arguments = value.get("parameters", {})
    return (value["name"], arguments) if isinstance(arguments, dict) else None


def parse_python_list(text: str) -> Optional[List[Call]]:
    """`[f(a=1, b="x"), g()]`: a non-empty list of calls by plain name with keyword literal arguments
    -> [(name, arguments)], else None. Unlike llama-models (which keeps only the first call and raises
    on a non-literal argument), every call is returned and a non-literal argument means "not a call list"."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except _AST_ERRORS:
        return None
    if not isinstance(node, ast.List) or not node.elts:
        return None
    calls: List[Call] = []
    for element in node.elts:
        if not isinstance(element, ast.Call) or not isinstance(element.func, ast.Name) or element.args:
            return None
        arguments: Dict[str, Any] = {}
        for keyword in element.keywords:
            if keyword.arg is None:  # **kwargs
                return None
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except _AST_ERRORS:
                return None
        calls.append((element.func.id, arguments))
    return calls


def parse_custom_calls(text: str) -> Optional[List[Call]]:
    """Custom-tool calls in any of the three formats (tried in llama-models' order), or None."""
    calls = parse_function_tags(text)
    if calls is None:
        call = parse_json_call(text)
        calls = [call] if call is not None else parse_python_list(text)
    return calls


def _as_builtin(call: Call) -> Call:
    """A custom-format call that names a built-in tool: its argument goes under the built-in's key, as in
    llama-models (there always "query", the first value; here "code" for code_interpreter, and an
    argument already under that key is kept)."""
    name, arguments = call
    if name not in BUILTIN_TOOLS or not arguments:
        return call
    key = "code" if name == "code_interpreter" else "query"
    return name, {key: arguments[key] if key in arguments else next(iter(arguments.values()))}


def parse_assistant(text: str) -> ParsedMessage:
    """A generated assistant message (decoded, special tokens as text) -> content, tool calls, stop reason."""
    content = text.strip(" ")
    if content.startswith(ASSISTANT_HEADER):
        content = content[len(ASSISTANT_HEADER) :]
    ipython = content.startswith(PYTHON_TAG)
    if ipython:
        content = content[len(PYTHON_TAG) :]
    stop_reason = None
    for stop, reason in ((EOT, "end_of_turn"), (EOM, "end_of_message")):
        if content.endswith(stop):
            content, stop_reason = content[: -len(stop)], reason
            break
    calls = parse_custom_calls(content)
    if calls is not None:
        calls = [_as_builtin(call) for call in calls]
    else:
        builtin = parse_builtin_call(content)
        if builtin is not None:
            calls = [builtin]
        elif ipython:
            calls = [("code_interpreter", {"code": content})]
    tool_calls = [ToolCall.new(name, arguments) for name, arguments in calls or []]
    return ParsedMessage("" if tool_calls else content, tool_calls, stop_reason)
