"""The fields of OpenAI's request bodies that the server honours, checked into plain values.

Every wrong type or value is a 400 naming the field; a field that would change the output and is
not supported is a 400 naming it; any other unknown field is ignored (clients send many).
"""

import math
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from .errors import APIError, bad_field

MAX_STOPS = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20
# Fields that change the output and are not supported: refused rather than silently ignored.
UNSUPPORTED = (
    "logit_bias",
    "response_format",
    "functions",
    "function_call",
    "suffix",
    "audio",
    "modalities",
    "prediction",
)


@dataclass(frozen=True)
class Common:
    """What chat and text completions share."""

    max_tokens: Optional[int]
    temperature: float
    top_p: float
    stop: List[str]
    seed: Optional[int]
    n: int
    stream: bool
    include_usage: bool
    frequency_penalty: float
    presence_penalty: float


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or low_open and value == low:
        left = "(" if low_open else "["
        raise bad_field(name, f"a number in {left}{low:g}, {high:g}]", value)
    return float(value)


def integer(body: dict, name: str, low: int, high: Optional[int] = None) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or high is not None and value > high:
        rule = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise bad_field(name, rule, value)
    return value


def boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_field(name, "true or false", value)
    return value


def refuse_unsupported(body: dict, extra: Sequence[str] = ()) -> None:
    for name in (*UNSUPPORTED, *extra):
        value = body.get(name)
        if value is None or name == "response_format" and value == {"type": "text"}:
            continue
        if name == "logit_bias" and value == {}:
            continue
        raise APIError(400, f"'{name}' is not supported by this server; leave it out", param=name,
                       code="unsupported_parameter")  # fmt: skip


def _stops(body: dict) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOPS:
        raise bad_field("stop", f"a string or a list of at most {MAX_STOPS} strings", stop)
    return list(stop)


def common(body: dict) -> Common:
    """The shared fields, checked. max_tokens: max_completion_tokens if given, else max_tokens."""
    max_tokens = integer(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = integer(body, "max_tokens", 1)
    options = body.get("stream_options")
    if options is not None and (
        not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)
    ):
        raise bad_field("stream_options", 'an object like {"include_usage": true}', options)
    stream = boolean(body, "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_field("seed", "an integer", seed)
    return Common(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stops(body),
        seed=seed,
        n=integer(body, "n", 1, MAX_N) or 1,
        stream=stream,
        include_usage=bool(stream and options and options.get("include_usage")),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
    )


def text_of(content: Any, where: str) -> str:
    """A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_field(where, 'a string or a list of {"type": "text", "text": ...} parts', content)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise APIError(400, f"'{where}[{j}]' is a {kind!r} part; this server takes text parts only",
                               param=f"{where}[{j}].type", code="unsupported_content")  # fmt: skip
            raise bad_field(f"{where}[{j}]", 'a {"type": "text", "text": "..."} part', part)
        parts.append(part["text"])
    return "".join(parts)
