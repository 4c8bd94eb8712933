"""Llama 2 chat format: dialog -> prompt tokens, exactly as the reference lays them out."""
from typing import List, Literal, Optional, Sequence, TypedDict

from .errors import ConfigError

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    role: Role
    content: str


Dialog = List[Message]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."
ROLES = ("system", "user", "assistant")


def _check_messages(dialog: Sequence, index: int) -> None:
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ConfigError(
            f"dialog {index} must be a non-empty list of messages, got {dialog!r:.80}; chat_completion takes "
            "a list of dialogs, each a list of {'role': ..., 'content': ...} messages"
        )
    for i, msg in enumerate(dialog):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConfigError(f"dialog {index}, message {i}: expected {{'role': ..., 'content': ...}}, got {msg!r:.80}")
        if msg["role"] not in ROLES:
            raise ConfigError(f"dialog {index}, message {i}: unknown role {msg['role']!r}; use one of {ROLES}")
        if not isinstance(msg["content"], str):
            raise TypeError(f"dialog {index}, message {i}: content must be a str, got {type(msg['content']).__name__}")


def has_special_tags(dialog: Dialog) -> bool:
    return any(tag in msg["content"] for tag in SPECIAL_TAGS for msg in dialog)


def fold_system(dialog: Dialog) -> Dialog:
    """A leading system message is folded into the first user message."""
    if dialog[0]["role"] != "system":
        return list(dialog)
    if len(dialog) < 2:
        raise ConfigError("a dialog with a system message needs a user message after it")
    first = {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
    return [first] + list(dialog[2:])


def encode_dialog(tokenizer, dialog: Dialog, index: int = 0) -> List[int]:
    """[INST] user [/INST] answer </s> pairs (each with bos/eos), then the last user turn with bos only."""
    _check_messages(dialog, index)
    dialog = fold_system(dialog)
    roles = [m["role"] for m in dialog]
    for i, role in enumerate(roles):
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise ConfigError(
                f"dialog {index}: message {i} has role {role!r} but {want!r} was expected; after an optional "
                f"system message, roles must alternate user, assistant, user, ... (got {roles})"
            )
    if roles[-1] != "user":
        raise ConfigError(f"dialog {index} ends with role {roles[-1]!r}; the last message must be from the user")
    tokens: List[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        tokens += tokenizer.encode(text, bos=True, eos=True)
    tokens += tokenizer.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", bos=True, eos=False)
    return tokens
