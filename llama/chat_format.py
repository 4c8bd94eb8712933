"""Dialog -> prompt tokens, per model family, exactly as Meta's references lay them out.

Llama 2 (SentencePiece tokenizer): `[INST]` tags (`meta-llama/llama`, `llama/generation.py`).
Llama 3, 3.1, 3.2 (tiktoken tokenizer): header tokens and `<|eot_id|>` (`meta-llama/llama3`,
`llama/tokenizer.py`, `ChatFormat`). `encode_dialog` and `is_unsafe` pick the family from the tokenizer.

Tool dialogs (Llama 3.1+, llama.tools): a dialog is one when `tools` are given or a message carries
`tool_calls` or `stop_reason`. Its tools are offered in the prompt (llama.tools.prompt), assistant
messages may carry tool calls, and tool results come as `ipython` messages (`tool` is a synonym). Such a
dialog is encoded exactly as llama-models 0.3.0 encodes the same RawMessages (meta-llama/llama-models,
`models/llama3/chat_format.py`): content as given, not stripped, `<|eom_id|>` after an assistant
message whose stop_reason is end_of_message, so that a model's tool call goes back into the prompt as
it was generated. Dialogs without tools keep meta-llama/llama3's layout (content stripped), token for
token as before.
"""

import datetime
from typing import Any, List, Literal, Mapping, Optional, Sequence, TypedDict

from .errors import ConfigError
from .tools.calls import STOP_REASONS, ToolCall, tool_call_from
from .tools.encode import encode_message as encode_tool_message
from .tools.prompt import TOOL_PROMPT_FORMATS, check_tools, with_tool_prompt
from .tools.support import check_tool_model

Role = Literal["system", "user", "assistant", "ipython", "tool"]


class _MessageFields(TypedDict):
    role: Role
    content: str


class Message(_MessageFields, total=False):
    tool_calls: List[Any]  # assistant messages of tool dialogs: ToolCall or dict (llama.tools.calls.tool_call_from)
    stop_reason: str  # one of llama.tools.calls.STOP_REASONS


Dialog = List[Message]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."
ROLES = ("system", "user", "assistant")  # Llama 2
LLAMA3_ROLES = ("system", "user", "assistant", "ipython")  # ipython: tool results (3.1+)
TOOL_ROLES = LLAMA3_ROLES + ("tool",)  # tool dialogs also take OpenAI's name for tool results


def _where(index: int, i: Optional[int] = None) -> str:
    """Dialogs and messages are numbered from 1 in error messages ("dialog 1, message 2": dialogs[0][1])."""
    return f"dialog {index + 1}" if i is None else f"dialog {index + 1}, message {i + 1}"


def _check_messages(dialog: Sequence, index: int, roles: Sequence[str] = ROLES) -> None:
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ConfigError(
            f"{_where(index)} must be a non-empty list of messages, got {dialog!r:.80}; chat_completion takes "
            "a list of dialogs, each a list of {'role': ..., 'content': ...} messages"
        )
    for i, msg in enumerate(dialog):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConfigError(f"{_where(index, i)}: expected {{'role': ..., 'content': ...}}, got {msg!r:.80}")
        if msg["role"] not in roles:
            raise ConfigError(f"{_where(index, i)}: unknown role {msg['role']!r}; use one of {roles}")
        if not isinstance(msg["content"], str):
            raise TypeError(f"{_where(index, i)}: content must be a str, got {type(msg['content']).__name__}")


def is_tool_dialog(dialog: Sequence) -> bool:
    """Whether a message carries `tool_calls` or `stop_reason` (then the dialog is encoded as a tool dialog)."""
    return isinstance(dialog, (list, tuple)) and any(
        isinstance(m, dict) and ("tool_calls" in m or "stop_reason" in m) for m in dialog
    )


def _message_calls(msg: Mapping[str, Any], where: str) -> List[ToolCall]:
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, (list, tuple)):
        raise ConfigError(f"{where}: tool_calls must be a list, got {calls!r:.80}")
    if calls and msg["role"] != "assistant":
        raise ConfigError(f"{where}: only assistant messages carry tool_calls, not role {msg['role']!r}")
    return [tool_call_from(call, f"{where}, tool call {k + 1}") for k, call in enumerate(calls)]


def _check_tool_messages(dialog: Sequence, index: int) -> None:
    _check_messages(dialog, index, TOOL_ROLES)
    for i, msg in enumerate(dialog):
        _message_calls(msg, _where(index, i))
        if "stop_reason" in msg and msg["stop_reason"] not in STOP_REASONS:
            raise ConfigError(
                f"{_where(index, i)}: unknown stop_reason {msg['stop_reason']!r}; use one of {STOP_REASONS}"
            )


def has_special_tags(dialog: Dialog) -> bool:
    return any(tag in msg["content"] for tag in SPECIAL_TAGS for msg in dialog)


def fold_system(dialog: Dialog) -> Dialog:
    """A leading system message is folded into the first user message."""
    if dialog[0]["role"] != "system":
        return list(dialog)
    if len(dialog) < 2:
        raise ConfigError("a dialog with a system message needs a user message after it")
    first: Message = {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
    return [first] + list(dialog[2:])


def _family(tokenizer) -> str:
    # Objects without `kind` (older or hand-made tokenizers) are Llama 2's SentencePiece interface.
    kind = getattr(tokenizer, "kind", "sentencepiece")
    if kind not in ("sentencepiece", "tiktoken"):
        raise ConfigError(f"tokenizer kind {kind!r} has no chat format; expected 'sentencepiece' or 'tiktoken'")
    return kind


def encode_dialog(
    tokenizer,
    dialog: Dialog,
    index: int = 0,
    tools: Optional[Sequence[Any]] = None,
    tool_prompt_format: str = "json",
    today: Optional[datetime.date] = None,
) -> List[int]:
    """Prompt tokens of one dialog (number `index` in error messages) in the tokenizer's family's layout.

    tools: built-in tool names (llama.tools.calls.BUILTIN_TOOLS) and OpenAI-style function specs
    {"type": "function", "function": {"name", "description", "parameters"}}, offered to the model
    (Llama 3 tokenizers only). tool_prompt_format: "json" or "function_tag", how custom tools are
    described and their calls written. today: the prompt's `Today Date:` (default: today).
    """
    if _family(tokenizer) == "tiktoken":
        if tools or is_tool_dialog(dialog):
            _check_tool_messages(dialog, index)
            return ChatFormat(tokenizer).encode_tool_dialog_prompt(dialog, tools or [], tool_prompt_format, today)
        _check_messages(dialog, index, LLAMA3_ROLES)
        return ChatFormat(tokenizer).encode_dialog_prompt(dialog)
    if tools:
        check_tool_model(_family(tokenizer), use_scaled_rope=False)
    return encode_llama2_dialog(tokenizer, dialog, index)


def is_unsafe(tokenizer, dialog: Dialog) -> bool:
    """Llama 2 answers a dialog containing its [INST]/<<SYS>> tags with UNSAFE_ERROR; Llama 3 has no such rule."""
    return _family(tokenizer) == "sentencepiece" and has_special_tags(dialog)


def encode_llama2_dialog(tokenizer, dialog: Dialog, index: int = 0) -> List[int]:
    """[INST] user [/INST] answer </s> pairs (each with bos/eos), then the last user turn with bos only."""
    _check_messages(dialog, index)
    dialog = fold_system(dialog)
    roles = [m["role"] for m in dialog]
    for i, role in enumerate(roles):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise ConfigError(
                f"{_where(index)}: message {i + 1} has role {role!r} but {want!r} was expected; after an optional "
                f"system message, roles must alternate user, assistant, user, ... (got {roles})"
            )
    if roles[-1] != "user":
        raise ConfigError(f"{_where(index)} ends with role {roles[-1]!r}; the last message must be from the user")
    tokens: List[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        tokens += tokenizer.encode(text, bos=True, eos=True)
    tokens += tokenizer.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
    return tokens


class ChatFormat:
    """Llama 3 layout; every method returns plain token ids.

    A message is `<|start_header_id|>` role `<|end_header_id|>` "\\n\\n" content `<|eot_id|>`; a dialog
    prompt is `<|begin_of_text|>`, its messages, then an empty assistant header for the model to fill.
    Like the reference it does not check roles; `encode_dialog` does.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode_header(self, message: Message) -> List[int]:
        specials = self.tokenizer.special_tokens
        return (
            [specials["<|start_header_id|>"]]
            + self.tokenizer.encode(message["role"], bos=False, eos=False)
            + [specials["<|end_header_id|>"]]
            + self.tokenizer.encode("\n\n", bos=False, eos=False)
        )

    def encode_message(self, message: Message) -> List[int]:
        content = self.tokenizer.encode(message["content"].strip(), bos=False, eos=False)
        return self.encode_header(message) + content + [self.tokenizer.special_tokens["<|eot_id|>"]]

    def encode_dialog_prompt(self, dialog: Dialog) -> List[int]:
        tokens = [self.tokenizer.special_tokens["<|begin_of_text|>"]]
        for message in dialog:
            tokens += self.encode_message(message)
        return tokens + self.encode_header({"role": "assistant", "content": ""})

    def encode_tool_dialog_prompt(
        self,
        dialog: Dialog,
        tools: Sequence[Any] = (),
        tool_prompt_format: str = "json",
        today: Optional[datetime.date] = None,
    ) -> List[int]:
        """A tool dialog's prompt: `tools` offered (llama.tools.prompt), then the messages as llama-models
        0.3.0's `ChatFormat.encode_dialog_prompt` encodes them (llama.tools.encode), then the assistant header."""
        if tool_prompt_format not in TOOL_PROMPT_FORMATS:
            raise ConfigError(f"unknown tool_prompt_format {tool_prompt_format!r}; use one of {TOOL_PROMPT_FORMATS}")
        messages = with_tool_prompt(list(dialog), check_tools(tools), tool_prompt_format, today)
        tokens = [self.tokenizer.special_tokens["<|begin_of_text|>"]]
        for i, message in enumerate(messages):
            calls = _message_calls(message, f"message {i}")
            tokens += encode_tool_message(self.tokenizer, message, calls, tool_prompt_format)
        return tokens + self.encode_header({"role": "assistant", "content": ""})
