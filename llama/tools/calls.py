"""A tool call (what an assistant message asks an executor to run) and the names of Llama 3.1's built-in tools."""

import json
import uuid
from dataclasses import dataclass
from typing import Any, Dict

from ..errors import ConfigError

# Announced on the system prompt's `Tools:` line; code_interpreter is implied by `Environment: ipython`
# (meta-llama/llama-models, `models/llama3_1/prompt_format.md`; photogen is in `models/datatypes.py`).
BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen", "code_interpreter")
# How an assistant message ended: <|eot_id|>, <|eom_id|> (the model waits for a tool result), or the length limit.
STOP_REASONS = ("end_of_turn", "end_of_message", "out_of_tokens")


@dataclass
class ToolCall:
    call_id: str
    tool_name: str  # one of BUILTIN_TOOLS, or a custom function's name
    arguments: Dict[str, Any]

    @classmethod
    def new(cls, tool_name: str, arguments: Dict[str, Any]) -> "ToolCall":
        """A call with a fresh random id, as llama-models gives each parsed call (uuid4)."""
        return cls(str(uuid.uuid4()), tool_name, arguments)

    @property
    def is_builtin(self) -> bool:
        return self.tool_name in BUILTIN_TOOLS

    def as_dict(self) -> Dict[str, Any]:
        """The JSON-ready form chat_completion returns (and accepts back in a dialog)."""
        return {"call_id": self.call_id, "tool_name": self.tool_name, "arguments": self.arguments}


def tool_call_from(obj: Any, where: str) -> ToolCall:
    """A ToolCall from a ToolCall, from chat_completion's {"call_id", "tool_name", "arguments"}, or from an
    OpenAI-style {"id", "type": "function", "function": {"name", "arguments": JSON text or dict}}.

    `where` starts the error messages (e.g. "dialog 1, message 3, tool call 1")."""
    if isinstance(obj, ToolCall):
        return obj
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: expected a dict or ToolCall, got {obj!r:.80}")
    if "function" in obj:  # OpenAI style
        function = obj["function"]
        if not isinstance(function, dict):
            raise ConfigError(f"{where}: 'function' must be a dict with 'name' and 'arguments', got {function!r:.80}")
        name, arguments, call_id = function.get("name"), function.get("arguments", {}), obj.get("id")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: 'arguments' is not valid JSON ({e}): {arguments!r:.80}") from None
    else:
        name, arguments, call_id = obj.get("tool_name"), obj.get("arguments", {}), obj.get("call_id")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: the tool name must be a non-empty str, got {name!r:.80}")
    if not isinstance(arguments, dict):
        raise ConfigError(f"{where}: arguments must be a dict (a JSON object), got {arguments!r:.80}")
    return ToolCall(str(call_id) if call_id is not None else str(uuid.uuid4()), name, arguments)
