"""OpenAI's `tools` on /v1/chat/completions, mapped to Llama 3.1's tool prompts (llama.tools).

The tools are offered in the prompt as `chat_completion(dialogs, tools=...)` offers them; the answer
is parsed for calls (llama.tools.parse) and returned as `message.tool_calls` with finish_reason
"tool_calls". tool_choice: "auto" (the model decides), "none" (no tools offered), "required" and a
named function (the answer is started for the model, `{"type": "function", "name": "`, with the
name where one is given, so that it can only be a call). parallel_tool_calls false keeps the first
call only. `role: "tool"` messages go back to the model as `ipython` results.
"""

import json
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, cast

from ..chat_format import Dialog, encode_dialog
from ..errors import ConfigError
from ..tools.parse import parse_assistant
from ..tools.prompt import check_tools
from ..tools.support import check_tool_model
from .errors import APIError, bad_field

JSON_CALL_START = '{"type": "function", "name": "'
# How a generated answer that is a call begins: the JSON and function-tag formats, a python list of
# calls, the built-in tools' python calls (after <|python_tag|>).
CALL_STARTS = ("{", "[", "<function", "<|python_tag|>", "brave_search.", "wolfram_alpha.", "photogen.")


@dataclass
class ToolPlan:
    tokenizer: Any
    tools: List[dict]
    choice: Any  # "auto", "required" or {"type": "function", "function": {"name": ...}}
    parallel: bool

    @property
    def prefix(self) -> str:
        """The start of the answer written for the model (required / a named function), else ""."""
        if isinstance(self.choice, dict):
            return JSON_CALL_START + self.choice["function"]["name"] + '", "parameters": '
        return JSON_CALL_START if self.choice == "required" else ""

    def encode(self, dialog: List[dict]) -> List[int]:
        dialog = [_llama_message(m) for m in dialog]
        tokens = encode_dialog(self.tokenizer, cast(Dialog, dialog), tools=self.tools)
        return tokens + (self.tokenizer.encode(self.prefix, bos=False, eos=False) if self.prefix else [])

    def may_be_call(self, text: str) -> bool:
        """Whether an answer that starts with `text` may still turn out to be a call (then it is held back)."""
        if self.prefix:
            return True
        head = text.lstrip()
        return not head or any(head.startswith(s) or s.startswith(head) for s in CALL_STARTS)

    def answer(self, text: str) -> Tuple[Optional[str], List[dict]]:
        """The generated text -> (content or None, OpenAI tool_calls)."""
        parsed = parse_assistant(self.prefix + text)
        calls = [openai_call(c.tool_name, c.arguments) for c in parsed.tool_calls]
        if not self.parallel:
            calls = calls[:1]
        return (None if calls else parsed.content), calls


def openai_call(name: str, arguments: Dict[str, Any]) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}  # fmt: skip


def _llama_message(message: dict) -> dict:
    """OpenAI's assistant calls and tool results, as the Llama tool dialog takes them."""
    out = {"role": message["role"], "content": message["content"]}
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = calls
        out["stop_reason"] = "end_of_message"  # the model waited for the results that follow
    return out


def _choice(body: dict, names: List[str]) -> Any:
    choice = body.get("tool_choice", "auto")
    if choice in ("auto", "none", "required"):
        return choice
    name = (
        choice.get("function", {}).get("name")
        if isinstance(choice, dict) and choice.get("type") == "function"
        else None
    )
    if not isinstance(name, str):
        raise bad_field("tool_choice", '"auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
                        choice)  # fmt: skip
    if name not in names:
        raise APIError(400, f"'tool_choice' names function {name!r}, which is not among the tools {names}",
                       param="tool_choice", code="invalid_value")  # fmt: skip
    return choice


def plan_tools(body: dict, generator) -> Optional[ToolPlan]:
    """The request's tools, checked; None without tools (or with tool_choice "none")."""
    tools = body.get("tools")
    if tools is None or tools == []:
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise APIError(400, "'tool_choice' needs 'tools'", param="tool_choice", code="invalid_value")
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        raise bad_field("tools", 'a list of {"type": "function", "function": {...}} tools', tools)
    try:
        names = [f["name"] for f in check_tools(tools).functions]
        check_tool_model(generator.tokenizer.kind, bool(generator.model.params.use_scaled_rope))
    except ConfigError as exc:
        raise APIError(400, str(exc), param="tools", code="invalid_value") from None
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise bad_field("parallel_tool_calls", "true or false", parallel)
    choice = _choice(body, names)
    if choice == "none":
        return None
    return ToolPlan(generator.tokenizer, tools, choice, parallel)
