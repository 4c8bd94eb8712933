"""SentencePiece wrapper with the reference's interface: encode(s, bos, eos), decode(ids)."""
import logging
import os
from typing import List

from sentencepiece import SentencePieceProcessor

from .errors import CheckpointError, ConfigError, MissingFileError

logger = logging.getLogger(__name__)


class Tokenizer:
    def __init__(self, model_path: str):
        if not isinstance(model_path, (str, os.PathLike)):
            raise ConfigError(f"tokenizer_path must be a path (str), got {type(model_path).__name__} {model_path!r}")
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            what = "is a directory, not a file" if os.path.isdir(model_path) else "not found"
            raise MissingFileError(
                f"tokenizer file {model_path!r} {what}; pass --tokenizer_path pointing at the "
                "tokenizer.model that came with the weights"
            )
        self.sp_model = SentencePieceProcessor()
        try:
            self.sp_model.Load(model_path)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(
                f"{model_path!r} is not a SentencePiece model ({exc}); pass the tokenizer.model file "
                "that came with the weights"
            ) from None
        self.n_words: int = self.sp_model.vocab_size()
        self.bos_id: int = self.sp_model.bos_id()
        self.eos_id: int = self.sp_model.eos_id()
        self.pad_id: int = self.sp_model.pad_id()
        self.kind = "sentencepiece"
        self.stop_tokens = [self.eos_id]
        if self.bos_id < 0 or self.eos_id < 0:
            raise CheckpointError(
                f"{model_path!r} is a SentencePiece model without bos/eos pieces (bos={self.bos_id}, "
                f"eos={self.eos_id}); Llama needs both: pass the tokenizer.model that came with the weights"
            )
        logger.debug("tokenizer %s: %d words, bos %d, eos %d", model_path, self.n_words, self.bos_id, self.eos_id)

    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        if not isinstance(s, str):
            raise TypeError(f"a prompt must be a str, got {type(s).__name__}: {s!r:.60}")
        t = self.sp_model.encode(s)
        if bos:
            t = [self.bos_id] + t
        if eos:
            t = t + [self.eos_id]
        return t

    def decode(self, t: List[int]) -> str:
        return self.sp_model.decode(t)
