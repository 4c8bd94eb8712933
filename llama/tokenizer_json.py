"""Hugging Face tokenizer.json files (the `tokenizers` library's format), read through `tokenizers`.

`TokenizerFile(path)` encodes text as text: text that looks like a special token is not one (special
tokens come in as ids only, as with SentencePiece and Llama 3's tiktoken tokenizer), and the file's
post-processor adds nothing (no automatic bos/eos: llama.tokenizer adds its own). It also decodes,
gives a token's bytes and finds tokens by name. Which model family a file holds, and so its bos/eos
and chat layout, is decided by llama.tokenizer's `JsonTokenizer`.
"""

import re
from typing import Dict, List, Optional

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders

from .errors import CheckpointError

_SNIFF_BYTES = 64
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte-fallback pieces
METASPACE = "\u2581"  # SentencePiece's word-initial space


def is_tokenizer_json(model_path: str) -> bool:
    """True when the file starts like JSON (a SentencePiece model starts 0x0a, a tiktoken table base64)."""
    with open(model_path, "rb") as f:
        return f.read(_SNIFF_BYTES).lstrip().startswith(b"{")


def byte_level_alphabet() -> Dict[str, int]:
    """Character -> byte of the ByteLevel pre-tokenizer (GPT-2's, Llama 3's): each printable Latin-1
    byte stands for itself, the other 68 bytes for U+0100, U+0101, ... in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    kept_set = set(kept)
    others = [b for b in range(256) if b not in kept_set]
    return {**{chr(b): b for b in kept}, **{chr(0x100 + i): b for i, b in enumerate(others)}}


class TokenizerFile:
    """One tokenizer.json, loaded with `tokenizers`."""

    def __init__(self, model_path: str):
        self.path = model_path
        try:
            self._tok = _HFTokenizer.from_file(model_path)
        except Exception as exc:  # the library raises a plain Exception with serde's message
            raise CheckpointError(
                f"{model_path!r} is JSON but not a tokenizer.json the tokenizers library can read ({exc}); pass "
                "the tokenizer.model or tokenizer.json that came with the weights (download it again if truncated)"
            ) from None
        self._tok.encode_special_tokens = True  # "<|eot_id|>" typed in a prompt is text, not the token
        self.n_words: int = self._tok.get_vocab_size(with_added_tokens=True)
        self._added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items()}
        self._byte_of = byte_level_alphabet() if isinstance(self._tok.decoder, decoders.ByteLevel) else None

    def token_id(self, name: str) -> Optional[int]:
        """The id of the token spelled `name`, None if the file has none."""
        return self._tok.token_to_id(name)

    def encode(self, s: str) -> List[int]:
        return self._tok.encode(s, add_special_tokens=False).ids

    def decode(self, t: List[int], skip_special: bool) -> str:
        """Text of the ids, with or without the text of special tokens; bytes that are not (yet) complete
        UTF-8 come out as U+FFFD."""
        return self._tok.decode(t, skip_special_tokens=skip_special)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for: an added token's text, a byte-level token's bytes, or a
        SentencePiece-style piece (`<0xNN>` for one byte, U+2581 for a space)."""
        piece = self._tok.id_to_token(token)
        if piece is None:
            raise ValueError(f"token {token!r} is not an id of {self.path!r}; its ids are 0 .. {self.n_words - 1}")
        if token in self._added:
            return self._added[token].encode()
        if self._byte_of is not None:
            try:
                return bytes(self._byte_of[c] for c in piece)
            except KeyError:  # not a byte-level piece after all
                return piece.encode()
        byte = _BYTE_PIECE.fullmatch(piece)
        return bytes([int(byte.group(1), 16)]) if byte else piece.replace(METASPACE, " ").encode()
