"""Token ids to text, one token at a time: deltas that add up exactly to decoding the whole row."""

from typing import List

# What SentencePiece decodes an incomplete UTF-8 byte sequence to; a later byte token may complete it.
REPLACEMENT_CHAR = "\ufffd"
WINDOW = 8  # tokens of left context a decode keeps once the text before them is settled


class TextDeltas:
    """Turns one row's tokens into text deltas that concatenate to tokenizer.decode(all tokens).

    Decoding token by token would drop SentencePiece's word-initial spaces and split multi-byte
    characters, so a window of the row's last tokens is decoded each time and only the new,
    complete suffix is given. The window starts WINDOW tokens back once all the text before it is
    out and its own text is whole (no replacement character, the end of what was given out): the
    text after those tokens then decodes the same as it would after the whole row. Decoding the
    whole row each time cost O(length) per token (260 us a token at 2048 tokens, demo tokenizer).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: List[int] = []
        self.start = 0  # the window: tokens[start:] are decoded
        self.emitted = ""  # the window's text given out so far

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens[self.start :])
        delta = self._advance(text.rstrip(REPLACEMENT_CHAR))
        if len(self.tokens) - self.start >= 2 * WINDOW and self.emitted == text:
            self._slide()
        return delta

    def flush(self) -> str:
        """The rest of the text (held-back replacement characters included) once the row is done."""
        return self._advance(self.tokenizer.decode(self.tokens[self.start :]))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            return ""  # hold back until the text agrees again with what was already given out
        delta, self.emitted = text[len(self.emitted) :], text
        return delta

    def _slide(self) -> None:
        """Start the window WINDOW tokens back, where their text is whole and ends what was given out."""
        start = len(self.tokens) - WINDOW
        tail = self.tokenizer.decode(self.tokens[start:])
        if tail and REPLACEMENT_CHAR not in tail and self.emitted.endswith(tail):
            self.start, self.emitted = start, tail
