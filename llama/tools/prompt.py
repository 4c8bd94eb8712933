"""The prompt text that offers tools to a Llama 3.1+ model, as `models/llama3_1/prompt_format.md`
(meta-llama/llama-models) lays it out.

Built-in tools go into the system message: `Environment: ipython` (which alone turns on
code_interpreter), a `Tools: brave_search, wolfram_alpha` line, the `Cutting Knowledge Date` and
`Today Date` lines, then the dialog's own system text. Custom tools (OpenAI-style function specs) are
described in a user message of their own right after it, in the JSON or the `<function=...>` format:
prompt_format.md's examples put them there ("Instructions for tools added as a user message"), as does
llama-stack, which writes these templates for llama-models.
"""

import datetime
import json
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from ..errors import ConfigError
from .calls import BUILTIN_TOOLS

KNOWLEDGE_CUTOFF = "December 2023"  # Llama 3.1's, as its prompts state it
TOOL_PROMPT_FORMATS = ("json", "function_tag")
_MONTHS = ("January February March April May June July August September October November December").split()

JSON_HEAD = (
    "Answer the user's question by making use of the following functions if needed.\n"
    "If none of the function can be used, please say so.\n"
    "Here is a list of functions in JSON format:\n"
)
JSON_TAIL = "\n\nReturn function calls in JSON format."
FUNCTION_TAG_HEAD = "You have access to the following functions:\n\n"
FUNCTION_TAG_TAIL = (
    "\n\nThink very carefully before calling functions.\n"
    "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line"
)


class Tools(NamedTuple):
    builtins: List[str]  # names from BUILTIN_TOOLS, in the order given
    functions: List[Dict[str, Any]]  # the "function" parts of the custom tools' specs


def today() -> datetime.date:
    """The date the `Today Date:` line states (tests replace this)."""
    return datetime.date.today()


def format_date(day: datetime.date) -> str:
    """The date as Meta writes it, "21 September 2024" (English month names whatever the locale)."""
    return f"{day.day:02d} {_MONTHS[day.month - 1]} {day.year}"


def check_tools(tools: Sequence[Any]) -> Tools:
    """Sort `tools` into built-in names and custom function specs, refusing anything else."""
    if isinstance(tools, (str, dict)) or not isinstance(tools, (list, tuple)):
        raise ConfigError(f"tools must be a list of tool names and function specs, got {tools!r:.80}")
    builtins: List[str] = []
    functions: List[Dict[str, Any]] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, str):
            if tool not in BUILTIN_TOOLS:
                raise ConfigError(
                    f"tool {i}: unknown built-in tool {tool!r}; use one of {BUILTIN_TOOLS}, or describe a "
                    "custom tool as {'type': 'function', 'function': {'name': ..., 'description': ..., "
                    "'parameters': {JSON schema}}}"
                )
            if tool not in builtins:
                builtins.append(tool)
            continue
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict):
            raise ConfigError(
                f"tool {i}: expected a built-in tool name or {{'type': 'function', 'function': {{...}}}}, "
                f"got {tool!r:.80}"
            )
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tool {i}: the function needs a non-empty str 'name', got {name!r:.80}")
        if not isinstance(function.get("description", ""), str):
            raise ConfigError(f"tool {i} ({name}): 'description' must be a str")
        if not isinstance(function.get("parameters", {}), dict):
            raise ConfigError(f"tool {i} ({name}): 'parameters' must be a JSON schema (a dict)")
        functions.append(function)
    return Tools(builtins, functions)


def system_text(builtins: Sequence[str], system: str, day: datetime.date) -> str:
    """The system message of a dialog with tools; `system` is the dialog's own system text ("" if none).

    prompt_format.md's dated examples, exactly: with built-ins other than code_interpreter a `Tools:`
    line follows `Environment: ipython`, without them an empty line does.
    """
    named = [name for name in builtins if name != "code_interpreter"]
    text = "Environment: ipython\n" + (f"Tools: {', '.join(named)}\n" if named else "\n")
    text += f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}\nToday Date: {format_date(day)}\n"
    return text + (f"\n{system}\n" if system else "")


def functions_text(functions: Sequence[Dict[str, Any]], tool_prompt_format: str = "json") -> str:
    """The user message that describes the custom tools and how to call them."""
    if tool_prompt_format == "json":
        specs = "\n".join(json.dumps({"type": "function", "function": f}, indent=4) for f in functions)
        return JSON_HEAD + specs + JSON_TAIL
    if tool_prompt_format == "function_tag":
        blocks = "\n\n".join(
            f"Use the function '{f['name']}' to '{f.get('description', '')}':\n{json.dumps(f)}" for f in functions
        )
        return FUNCTION_TAG_HEAD + blocks + FUNCTION_TAG_TAIL
    raise ConfigError(f"unknown tool_prompt_format {tool_prompt_format!r}; use one of {TOOL_PROMPT_FORMATS}")


def with_tool_prompt(
    dialog: Sequence[Mapping[str, Any]],
    tools: Tools,
    tool_prompt_format: str = "json",
    day: Optional[datetime.date] = None,
) -> List[Mapping[str, Any]]:
    """`dialog` with the tools offered: a leading system message replaced by system_text (which
    keeps its text), then the custom tools' user message, then the rest. No tools: `dialog` as is."""
    if not tools.builtins and not tools.functions:
        return list(dialog)
    rest = list(dialog)
    system = rest.pop(0)["content"] if rest and rest[0]["role"] == "system" else ""
    head: List[Mapping[str, Any]] = [{"role": "system", "content": system_text(tools.builtins, system, day or today())}]
    if tools.functions:
        head.append({"role": "user", "content": functions_text(tools.functions, tool_prompt_format)})
    return head + rest
