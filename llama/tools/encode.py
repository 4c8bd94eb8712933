"""Messages of a tool dialog -> tokens, as llama-models 0.3.0 encodes them (meta-llama/llama-models,
`models/llama3/chat_format.py` `ChatFormat.encode_message`, `models/llama3/tool_utils.py`
`ToolUtils.encode_tool_call`).

A message is its header (role `tool` is written `ipython`), its content as given (not stripped), each
tool call's text encoded on its own, then `<|eom_id|>` for an assistant message whose stop_reason is
end_of_message, else `<|eot_id|>`. An assistant message whose first call is code_interpreter starts
with `<|python_tag|>`; llama-models writes no `<|python_tag|>` before the other built-in calls
(prompt_format.md shows one; the model emits one) and neither does this encoder.
"""

import json
from typing import Any, List, Mapping, Sequence

from ..errors import ConfigError
from .calls import ToolCall


def header_role(role: str) -> str:
    """The role as the header writes it: tool results are `ipython` messages."""
    return "ipython" if role == "tool" else role


def tool_call_text(call: ToolCall, tool_prompt_format: str = "json") -> str:
    """How an assistant message spells a call: `brave_search.call(query="...")` for the query tools,
    the bare code for code_interpreter, a JSON object or `<function=name>{...}</function>` for the rest."""
    if call.is_builtin:
        key = "code" if call.tool_name == "code_interpreter" else "query"
        value = call.arguments.get(key)
        if not isinstance(value, str):
            raise ConfigError(f"a {call.tool_name} call needs a str argument {key!r}, got {call.arguments!r:.80}")
        return value if key == "code" else f'{call.tool_name}.call(query="{value}")'
    if tool_prompt_format == "json":
        return json.dumps({"type": "function", "name": call.tool_name, "parameters": call.arguments})
    if tool_prompt_format == "function_tag":
        return f"<function={call.tool_name}>{json.dumps(call.arguments)}</function>"
    raise ConfigError(f"unknown tool_prompt_format {tool_prompt_format!r}; use 'json' or 'function_tag'")


def encode_message(
    tokenizer, message: Mapping[str, Any], calls: Sequence[ToolCall], tool_prompt_format: str = "json"
) -> List[int]:
    """One message of a tool dialog; `calls`: its tool calls, already ToolCalls (assistant messages only)."""
    specials = tokenizer.special_tokens

    def text(s: str) -> List[int]:
        return tokenizer.encode(s, bos=False, eos=False)

    role = message["role"]
    tokens = [specials["<|start_header_id|>"]] + text(header_role(role)) + [specials["<|end_header_id|>"]]
    tokens += text("\n\n")
    is_assistant = role == "assistant"
    if is_assistant and calls and calls[0].tool_name == "code_interpreter":
        tokens.append(specials["<|python_tag|>"])
    tokens += text(message["content"])
    if is_assistant:
        for call in calls:
            tokens += text(tool_call_text(call, tool_prompt_format))
    eom = is_assistant and message.get("stop_reason") == "end_of_message"
    return tokens + [specials["<|eom_id|>" if eom else "<|eot_id|>"]]
