"""What chat_completion returns for a dialog with tools: the assistant message, its tool calls and how it ended."""

from typing import Optional

from ..chat_format import Message
from .parse import parse_assistant


def stop_reason(stop_id: Optional[int], tokenizer) -> str:
    """The stop token that ended a generated row (None: none did) -> its STOP_REASONS name.

    <|end_of_text|>, which llama-models' StopReason has no name for, counts as end_of_turn: the model
    ended its answer, it did not run out of tokens."""
    if stop_id is None:
        return "out_of_tokens"
    return "end_of_message" if stop_id == tokenizer.special_tokens["<|eom_id|>"] else "end_of_turn"


def tool_answer(text: str, stop_id: Optional[int], tokenizer) -> Message:
    """{"role": "assistant", "content", "tool_calls": [{"call_id", "tool_name", "arguments"}], "stop_reason"}:
    a message that, appended to the dialog, is encoded back as the model wrote it."""
    parsed = parse_assistant(text)
    return {
        "role": "assistant",
        "content": parsed.content,
        "tool_calls": [call.as_dict() for call in parsed.tool_calls],
        "stop_reason": stop_reason(stop_id, tokenizer),
    }
