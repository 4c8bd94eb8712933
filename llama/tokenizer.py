"""Llama tokenizers behind one interface: SentencePiece (Llama 2), tiktoken BPE (Llama 3, 3.1, 3.2)
and Hugging Face tokenizer.json files of either family.

`Tokenizer(model_path)` reads the file's first bytes to tell the three apart and returns a
`SentencePieceTokenizer`, a `TiktokenTokenizer` or a `JsonTokenizer`. All have `kind`, `n_words`,
`bos_id`, `eos_id`, `pad_id`, `stop_tokens`, `encode(s, bos=..., eos=...)` and `decode(ids)`, with the
ids and text of Meta's references (`meta-llama/llama`, `meta-llama/llama3`: `llama/tokenizer.py`).
`kind` names the family's tokenizer ("sentencepiece" or "tiktoken"), also for a tokenizer.json: the
chat layout and the generator follow it.
"""

import logging
import os
import re
from typing import AbstractSet, Collection, Dict, Iterator, List, Literal, Sequence, Tuple, Union

import tiktoken
from sentencepiece import SentencePieceProcessor

from .bpe_table import load_bpe_table
from .chat_format import ChatFormat  # noqa: F401  (Meta's Llama 3 code imports it from here)
from .errors import CheckpointError, ConfigError, MissingFileError
from .tokenizer_json import TokenizerFile, is_tokenizer_json

logger = logging.getLogger(__name__)

# A tiktoken BPE table is text, one `<base64 of the token's bytes> <rank>` per line. A SentencePiece
# model is a protobuf whose first byte is 0x0a, so its "first line" is empty and never matches.
_BPE_LINE = re.compile(rb"[A-Za-z0-9+/]+={0,2} [0-9]+\r?")
_SNIFF_BYTES = 1024

# Llama 3's pre-tokenizer regex and its 256 special tokens (names of llama-models 3.1+; 3.0 has the
# same ids and calls 128004/5 reserved 2/3, 128008 reserved 4 and 128010+ reserved 5+).
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
NUM_RESERVED_SPECIAL_TOKENS = 256
_NAMED_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
_CHAT_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
SPECIAL_TOKEN_NAMES = _NAMED_SPECIALS + [
    f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_RESERVED_SPECIAL_TOKENS - len(_NAMED_SPECIALS))
]

# tiktoken panics on inputs over ~400k characters and slows down quadratically on very long runs of
# whitespace or non-whitespace (openai/tiktoken#195); the reference cuts inputs at these limits and
# encodes the pieces separately, which changes the ids at the cuts, so the limits are part of the format.
MAX_ENCODE_CHARS = 400_000
MAX_RUN_CHARS = 25_000
_RUNS = re.compile(r"\s+|\S+")  # `\s` is exactly str.isspace(), which the reference's cut uses


def special_token_ids(n_base: int) -> Dict[str, int]:
    """Name -> id of the 256 special tokens, numbered right after the table's `n_base` ranks."""
    return {name: n_base + i for i, name in enumerate(SPECIAL_TOKEN_NAMES)}


def _checked_path(model_path) -> str:
    if not isinstance(model_path, (str, os.PathLike)):
        raise ConfigError(f"tokenizer_path must be a path (str), got {type(model_path).__name__} {model_path!r}")
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        what = "is a directory, not a file" if os.path.isdir(model_path) else "not found"
        raise MissingFileError(
            f"tokenizer file {model_path!r} {what}; pass --tokenizer_path pointing at the "
            "tokenizer.model or tokenizer.json that came with the weights"
        )
    return model_path


def _first_line(model_path: str) -> bytes:
    with open(model_path, "rb") as f:
        return f.read(_SNIFF_BYTES).split(b"\n", 1)[0]


def is_bpe_table(model_path: str) -> bool:
    """True when the file starts like a tiktoken BPE table (`<base64> <rank>`)."""
    return _BPE_LINE.fullmatch(_first_line(model_path)) is not None


class Tokenizer:
    """`Tokenizer(model_path)` loads a tokenizer.model (either kind) or a tokenizer.json, chosen by the file's bytes."""

    kind: str
    n_words: int
    bos_id: int
    eos_id: int
    pad_id: int
    stop_tokens: List[int]

    def __new__(cls, model_path=None):  # the default lets pickle and copy rebuild a subclass instance
        if cls is Tokenizer:
            cls = _class_for(_checked_path(model_path))
        return super().__new__(cls)

    def encode(self, s: str, *, bos: bool, eos: bool) -> List[int]:
        """s -> token ids, with the BOS token first if `bos` and the EOS token last if `eos`."""
        raise NotImplementedError

    def decode(self, t: List[int]) -> str:
        """Token ids -> text."""
        raise NotImplementedError


class SentencePieceTokenizer(Tokenizer):
    """Llama 2: the reference's SentencePiece wrapper, encode(s, bos, eos) and decode(ids)."""

    kind = "sentencepiece"

    def __init__(self, model_path):
        model_path = _checked_path(model_path)
        self.sp_model = SentencePieceProcessor()
        try:
            self.sp_model.Load(model_path)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"{model_path!r} is not a SentencePiece model ({exc}), a tiktoken BPE table (its first line "
                f"{_first_line(model_path)[:60]!r} is not '<base64> <rank>') nor a Hugging Face tokenizer.json "
                "(it does not start with '{'); pass the tokenizer.model or tokenizer.json file that came with "
                "the weights"
            ) from None
        self.n_words: int = self.sp_model.vocab_size()
        self.bos_id: int = self.sp_model.bos_id()
        self.eos_id: int = self.sp_model.eos_id()
        self.pad_id: int = self.sp_model.pad_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise CheckpointError(
                f"{model_path!r} is a SentencePiece model without bos/eos pieces (bos={self.bos_id}, "
                f"eos={self.eos_id}); Llama needs both: pass the tokenizer.model that came with the weights"
            )
        self.stop_tokens: List[int] = [self.eos_id]
        logger.debug("tokenizer %s: %d words, bos %d, eos %d", model_path, self.n_words, self.bos_id, self.eos_id)

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        _check_text(s)
        t = self.sp_model.encode(s)
        if bos:
            t = [self.bos_id] + t
        if eos:
            t = t + [self.eos_id]
        return t

    def decode(self, t: List[int]) -> str:
        return self.sp_model.decode(t)


class TiktokenTokenizer(Tokenizer):
    """Llama 3, 3.1, 3.2: a tiktoken BPE table plus 256 special tokens numbered after its ranks."""

    kind = "tiktoken"
    num_reserved_special_tokens = NUM_RESERVED_SPECIAL_TOKENS
    pat_str = PAT_STR

    def __init__(self, model_path):
        model_path = _checked_path(model_path)
        self.model = _encoding(model_path)
        self.special_tokens: Dict[str, int] = special_token_ids(self.model.n_vocab - len(SPECIAL_TOKEN_NAMES))
        self.n_words: int = self.model.n_vocab
        self.bos_id: int = self.special_tokens["<|begin_of_text|>"]
        self.eos_id: int = self.special_tokens["<|end_of_text|>"]
        self.eot_id: int = self.special_tokens["<|eot_id|>"]
        self.eom_id: int = self.special_tokens["<|eom_id|>"]
        # -1 as in meta-llama/llama3 (llama-models uses <|finetune_right_pad_id|>); the generator only
        # ever uses it to fill prompt buffers, never as a model input.
        self.pad_id: int = -1
        # <|eom_id|> stops 3.1+ tool calls; for 3.0 it is a reserved token the model never emits.
        self.stop_tokens: List[int] = [self.eos_id, self.eom_id, self.eot_id]
        logger.debug("tokenizer %s: tiktoken, %d words", model_path, self.n_words)

    def encode(
        self,
        s: str,
        *,
        bos: bool,
        eos: bool,
        allowed_special: Union[Literal["all"], AbstractSet[str]] = frozenset(),
        disallowed_special: Union[Literal["all"], Collection[str]] = (),
    ) -> List[int]:
        """Ids of `s`; by default text that looks like a special token is encoded as plain text."""
        _check_text(s)
        t: List[int] = [self.bos_id] if bos else []
        for piece in split_for_encoding(s):
            t += self.model.encode(piece, allowed_special=allowed_special, disallowed_special=disallowed_special)
        if eos:
            t.append(self.eos_id)
        return t

    def decode(self, t: Union[int, Sequence[int]]) -> str:
        """Text of the ids; bytes that are not (yet) complete UTF-8 come out as U+FFFD."""
        if isinstance(t, int):  # the Llama 2 generator decodes log-prob tokens one int at a time
            t = [t]
        return self.model.decode(list(t))


class JsonTokenizer(Tokenizer):
    """A Hugging Face tokenizer.json (llama.tokenizer_json) with the ids, specials and chat layout of its
    family: Llama 3's when it has <|begin_of_text|> (kind "tiktoken", as TiktokenTokenizer), else
    Llama 2's <s> and </s> (kind "sentencepiece", as SentencePieceTokenizer)."""

    def __init__(self, model_path):
        model_path = _checked_path(model_path)
        self.file = TokenizerFile(model_path)
        self.n_words: int = self.file.n_words
        self.pad_id: int = -1  # as both families' tokenizers: the generator only fills prompt buffers with it
        first_special = self.file.token_id("<|begin_of_text|>")
        if first_special is not None:
            self.kind = "tiktoken"
            self.special_tokens: Dict[str, int] = special_token_ids(first_special)
            self._check_llama3_ids()
            self.bos_id, self.eos_id = self.special_tokens["<|begin_of_text|>"], self.special_tokens["<|end_of_text|>"]
            self.eot_id: int = self.special_tokens["<|eot_id|>"]
            self.eom_id: int = self.special_tokens["<|eom_id|>"]
            self.stop_tokens: List[int] = [self.eos_id, self.eom_id, self.eot_id]
        else:
            self.kind = "sentencepiece"
            self.bos_id, self.eos_id = self._required_id("<s>"), self._required_id("</s>")
            self.stop_tokens = [self.eos_id]
        logger.debug("tokenizer %s: tokenizer.json (%s family), %d words", model_path, self.kind, self.n_words)

    def _check_llama3_ids(self) -> None:
        # Named tokens the file has must sit where Llama 3 numbers them (reserved ones change names across versions).
        for name in _NAMED_SPECIALS:
            found = self.file.token_id(name)
            if found is not None and found != self.special_tokens[name]:
                raise CheckpointError(
                    f"{self.file.path!r} has {name} as token {found}, but Llama 3 numbers it "
                    f"{self.special_tokens[name]} (<|begin_of_text|> + {_NAMED_SPECIALS.index(name)}); "
                    "this tokenizer.json is not a Llama 3 one: pass the tokenizer that came with the weights"
                )
        for name in _CHAT_SPECIALS:
            self._required_id(name)

    def _required_id(self, name: str) -> int:
        found = self.file.token_id(name)
        if found is None:
            raise CheckpointError(
                f"{self.file.path!r} has no {name} token; a Llama tokenizer.json has Llama 3's "
                f"{', '.join(_CHAT_SPECIALS)} or Llama 2's <s> and </s>: pass the tokenizer that came with the weights"
            )
        return found

    def encode(self, s: str, *, bos: bool, eos: bool) -> List[int]:
        """Ids of `s`; text that looks like a special token is encoded as plain text. Llama 3's are cut
        into the pieces its reference encodes one by one (`split_for_encoding`)."""
        _check_text(s)
        t: List[int] = [self.bos_id] if bos else []
        for piece in split_for_encoding(s) if self.kind == "tiktoken" else [s]:
            t += self.file.encode(piece)
        if eos:
            t.append(self.eos_id)
        return t

    def decode(self, t: Union[int, Sequence[int]]) -> str:
        """Text of the ids: with the text of special tokens for Llama 3 (as tiktoken), without for
        Llama 2 (SentencePiece decodes bos and eos to nothing). Bytes that are not UTF-8 come out as
        `tokenizers` (and transformers) decode them: U+FFFD for each of Llama 2's byte tokens in a run
        that is not valid UTF-8, where SentencePiece keeps the valid bytes of the run."""
        return self.file.decode([t] if isinstance(t, int) else list(t), skip_special=self.kind == "sentencepiece")

    def token_bytes(self, token: int) -> bytes:
        """The bytes token `token` stands for."""
        return self.file.token_bytes(token)


def _class_for(model_path: str) -> type:
    if is_bpe_table(model_path):
        return TiktokenTokenizer
    return JsonTokenizer if is_tokenizer_json(model_path) else SentencePieceTokenizer


def _check_text(s) -> None:
    if not isinstance(s, str):
        raise TypeError(f"a prompt must be a str, got {type(s).__name__}: {s!r:.60}")


def split_for_encoding(s: str) -> Iterator[str]:
    """The pieces the reference encodes one by one: chunks of at most MAX_ENCODE_CHARS characters,
    each cut so that no run of whitespace or of non-whitespace is longer than MAX_RUN_CHARS
    (a run longer than that is cut every MAX_RUN_CHARS characters from its start)."""
    for chunk_start in range(0, len(s), MAX_ENCODE_CHARS):
        chunk = s[chunk_start : chunk_start + MAX_ENCODE_CHARS]
        if len(chunk) <= MAX_RUN_CHARS:  # no run can be too long: the usual case costs nothing
            yield chunk
            continue
        start = 0
        for run in _RUNS.finditer(chunk):
            for cut in range(run.start() + MAX_RUN_CHARS, run.end(), MAX_RUN_CHARS):
                yield chunk[start:cut]
                start = cut
        yield chunk[start:]


# Built encodings by (path, size, mtime): tests and tools load the same 2 MB table many times, and an
# Encoding is immutable, so one per file can be shared.
_ENCODINGS: Dict[Tuple[str, int, int], tiktoken.Encoding] = {}


def _encoding(model_path: str) -> tiktoken.Encoding:
    st = os.stat(model_path)
    key = (os.path.realpath(model_path), st.st_size, st.st_mtime_ns)
    if key not in _ENCODINGS:
        ranks = load_bpe_table(model_path)
        if len(_ENCODINGS) >= 4:  # a long-lived process must not collect every table it ever read
            del _ENCODINGS[next(iter(_ENCODINGS))]
        _ENCODINGS[key] = tiktoken.Encoding(
            name=os.path.basename(model_path),
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=special_token_ids(len(ranks)),
        )
    return _ENCODINGS[key]
