"""Token ids to text, one token at a time: deltas that add up exactly to decoding the whole row."""

from typing import List

# What SentencePiece decodes an incomplete UTF-8 byte sequence to; a later byte token may complete it.
REPLACEMENT_CHAR = "\ufffd"


class TextDeltas:
    """Turns one row's tokens into text deltas that concatenate to tokenizer.decode(all tokens).

    Decoding token by token would drop SentencePiece's word-initial spaces and split multi-byte
    characters, so the whole row is decoded each time and only the new, complete suffix is given.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.tokens: List[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        self.tokens.append(token)
        stable = self.tokenizer.decode(self.tokens).rstrip(REPLACEMENT_CHAR)
        return self._advance(stable)

    def flush(self) -> str:
        """The rest of the text (held-back replacement characters included) once the row is done."""
        return self._advance(self.tokenizer.decode(self.tokens))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):
            return ""  # hold back until the text agrees again with what was already given out
        delta, self.emitted = text[len(self.emitted) :], text
        return delta
