"""Dialog -> prompt tokens, per model family, exactly as Meta's references lay them out.

Llama 2 (SentencePiece tokenizer): `[INST]` tags (`meta-llama/llama`, `llama/generation.py`).
Llama 3, 3.1, 3.2 (tiktoken tokenizer): header tokens and `<|eot_id|>` (`meta-llama/llama3`,
`llama/tokenizer.py`, `ChatFormat`). `encode_dialog` and `is_unsafe` pick the family from the tokenizer.
"""

from typing import List, Literal, Sequence, TypedDict

from .errors import ConfigError

Role = Literal["system", "user", "assistant", "ipython"]


class Message(TypedDict):
    role: Role
    content: str


Dialog = List[Message]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."
ROLES = ("system", "user", "assistant")  # Llama 2
LLAMA3_ROLES = ("system", "user", "assistant", "ipython")  # ipython: tool results (3.1+)


def _check_messages(dialog: Sequence, index: int, roles: Sequence[str] = ROLES) -> None:
    if not isinstance(dialog, (list, tuple)) or not dialog:
        raise ConfigError(
            f"dialog {index} must be a non-empty list of messages, got {dialog!r:.80}; chat_completion takes "
            "a list of dialogs, each a list of {'role': ..., 'content': ...} messages"
        )
    for i, msg in enumerate(dialog):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ConfigError(f"dialog {index}, message {i}: expected {{'role': ..., 'content': ...}}, got {msg!r:.80}")
        if msg["role"] not in roles:
            raise ConfigError(f"dialog {index}, message {i}: unknown role {msg['role']!r}; use one of {roles}")
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


def _family(tokenizer) -> str:
    # Objects without `kind` (older or hand-made tokenizers) are Llama 2's SentencePiece interface.
    kind = getattr(tokenizer, "kind", "sentencepiece")
    if kind not in ("sentencepiece", "tiktoken"):
        raise ConfigError(f"tokenizer kind {kind!r} has no chat format; expected 'sentencepiece' or 'tiktoken'")
    return kind


def encode_dialog(tokenizer, dialog: Dialog, index: int = 0) -> List[int]:
    """Prompt tokens of one dialog (number `index` in error messages) in the tokenizer's family's layout."""
    if _family(tokenizer) == "tiktoken":
        _check_messages(dialog, index, LLAMA3_ROLES)
        return ChatFormat(tokenizer).encode_dialog_prompt(dialog)
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
