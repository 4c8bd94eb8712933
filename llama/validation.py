"""Checks of user-supplied values, in one place: each raises a typed error naming the value, the rule
and the fix, where the value is first seen."""

import math
from numbers import Integral
from typing import List, Optional, Sequence

from .errors import ConfigError


def whole_number(name: str, value, minimum: Optional[int] = 1, below: Optional[int] = None, fix: str = "") -> int:
    """`value` if it is an int (not a bool), >= minimum (None: no bound) and < below (None: no bound);
    else ConfigError naming `name`, the rule, the value and then `fix` (e.g. "; e.g. --shards 2")."""
    too_small = minimum is not None and isinstance(value, int) and value < minimum
    too_big = below is not None and isinstance(value, int) and value >= below
    if isinstance(value, bool) or not isinstance(value, int) or too_small or too_big:
        if below is not None:
            rule = f"an integer in [{minimum}, {below})"
        else:
            rule = {None: "an integer", 1: "a whole number > 0"}.get(minimum, f"an integer >= {minimum}")
        raise ConfigError(f"{name} must be {rule}, got {value!r}{fix}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling(temperature: float, top_p: float, max_gen_len: Optional[int]) -> None:
    """Raise ConfigError for sampling settings generate would reject; None max_gen_len means the default."""
    if not _is_number(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}; e.g. 0.6")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be a number in (0, 1], got {top_p!r}; e.g. 0.9 (1 = no nucleus cut)")
    if max_gen_len is not None:
        whole_number("max_gen_len", max_gen_len, minimum=0)


def stop_list(stop, echo: bool = False) -> List[str]:
    """stop=: None, a string or a list of strings (each generation ends before the first) -> the list;
    ConfigError naming anything else, or stop strings with echo."""
    values = [] if stop is None else [stop] if isinstance(stop, str) else stop
    listed = isinstance(values, Sequence) and not isinstance(values, bytes)
    if not listed or not all(isinstance(s, str) and s for s in values):
        raise ConfigError(f"stop must be a non-empty string or a list of them, got {stop!r:.80}; e.g. stop=['\\n\\n']")
    if values and echo:
        raise ConfigError("stop strings cut the generated text, but echo=True returns the prompt too; pass one of them")
    return list(values)


def _is_token(t, n_words: int) -> bool:
    return not isinstance(t, bool) and isinstance(t, Integral) and 0 <= int(t) < n_words


def check_prompt_tokens(prompt_tokens: Sequence, n_words: int, max_seq_len: int) -> None:
    """Every prompt a non-empty list of token ids of this tokenizer, no longer than max_seq_len."""
    if isinstance(prompt_tokens, (str, bytes)) or not isinstance(prompt_tokens, Sequence):
        raise TypeError(
            f"prompt_tokens must be a list of token-id lists, got {type(prompt_tokens).__name__}; "
            "for text, call text_completion([...])"
        )
    for i, row in enumerate(prompt_tokens):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(
                f"prompt_tokens[{i}] must be a list of token ids, got {type(row).__name__} {row!r:.60}; "
                "encode text with tokenizer.encode(text, bos=True, eos=False), or call text_completion"
            )
        if not row:
            raise ConfigError(f"prompt_tokens[{i}] is empty (0 tokens); encode prompts with bos=True")
        if len(row) > max_seq_len:
            raise ConfigError(
                f"prompt {i + 1} (index {i}) has {len(row)} tokens, more than max_seq_len={max_seq_len}; "
                "shorten the prompt or build with a larger max_seq_len"
            )
        bad = next(
            (t for t in row if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= int(t) < n_words), None
        )
        if bad is not None:
            raise ConfigError(
                f"prompt_tokens[{i}] holds {bad!r}, not a token id of this tokenizer (0 .. {n_words - 1}); "
                "encode prompts with the tokenizer that came with the weights"
            )


def check_request(
    prompt_tokens: Sequence, temperature: float, top_p: float, max_gen_len: int, n_words: int, max_seq_len: int
) -> None:
    """Everything generate and the streams check before decoding."""
    check_sampling(temperature, top_p, None)
    whole_number("max_gen_len", max_gen_len, minimum=0)
    check_prompt_tokens(prompt_tokens, n_words, max_seq_len)
