"""OpenAI's response shapes: chat completions, text completions, their stream chunks, usage and
log-probabilities, from the engine's Completions."""

import re
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..decoding.requests import Completion
from .prepare import Job

FINISH = {"stop": "stop", "length": "length"}
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(job: Job, completions: Sequence[Completion]) -> dict:
    firsts = completions[:: job.common.n]  # the prompt is counted once for its n choices
    completion_tokens = sum(len(c.tokens) for c in completions)
    return {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": job.prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in firsts)},
    }


def token_bytes(tokenizer, token: int) -> List[int]:
    """The bytes a token stands for (a piece of a multi-byte character decodes to U+FFFD on its own)."""
    if hasattr(tokenizer, "token_bytes"):  # a tokenizer.json (llama.tokenizer.JsonTokenizer), either family
        return list(tokenizer.token_bytes(token))
    if tokenizer.kind == "tiktoken":
        return list(tokenizer.model.decode_single_token_bytes(token))
    piece = tokenizer.sp_model.id_to_piece(token)
    byte = _BYTE_PIECE.fullmatch(piece)
    return [int(byte.group(1), 16)] if byte else list(piece.replace("\u2581", " ").encode())


def _entry(tokenizer, token: int, logprob: float) -> dict:
    return {"token": tokenizer.decode([token]), "logprob": logprob, "bytes": token_bytes(tokenizer, token)}


def chat_logprobs(tokenizer, tokens: Sequence[int], logprobs: Sequence[float],
                  tops: Optional[Sequence[Sequence[Tuple[int, float]]]]) -> dict:  # fmt: skip
    """{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}, ...]}."""
    content = []
    for i, (token, logprob) in enumerate(zip(tokens, logprobs)):
        entry = _entry(tokenizer, token, logprob)
        entry["top_logprobs"] = [_entry(tokenizer, t, lp) for t, lp in (tops[i] if tops else [])]
        content.append(entry)
    return {"content": content}


def text_logprobs(tokenizer, tokens: Sequence[int], logprobs: Sequence[Optional[float]],
                  tops: Sequence[Optional[Sequence[Tuple[int, float]]]], offset: int = 0) -> dict:  # fmt: skip
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    texts = [tokenizer.decode([t]) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    top = [None if t is None else {tokenizer.decode([k]): lp for k, lp in t} for t in tops]
    return {"tokens": texts, "token_logprobs": list(logprobs), "top_logprobs": top, "text_offset": offsets}


def chat_message(choice_content: Optional[str], calls: List[dict]) -> Dict[str, Any]:
    message: Dict[str, Any] = {"role": "assistant", "content": choice_content}
    if calls:
        message["tool_calls"] = calls
    return message


def finish_reason(completion: Completion, calls: List[dict]) -> str:
    return "tool_calls" if calls else FINISH.get(completion.finish_reason, "stop")


def envelope(kind: str, rid: str, created: int, model: str, choices: list, **extra: Any) -> dict:
    obj = {"chat": "chat.completion", "text": "text_completion", "chat.chunk": "chat.completion.chunk",
           "text.chunk": "text_completion"}[kind]  # fmt: skip
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices,
            "system_fingerprint": None, **extra}  # fmt: skip
