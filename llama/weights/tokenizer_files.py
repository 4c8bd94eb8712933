"""Where a checkpoint's tokenizer sits: tokenizer.model (Meta's folders, Llama 2 Hugging Face ones),
original/tokenizer.model (Llama 3 Hugging Face folders) or tokenizer.json (Hugging Face's format)."""

from pathlib import Path
from typing import List, Optional

from ..errors import MissingFileError
from .meta import ORIGINAL

TOKENIZER = "tokenizer.model"
TOKENIZER_JSON = "tokenizer.json"  # Hugging Face's tokenizers format


def _tokenizer_places(ckpt_dir) -> List[Path]:
    return [Path(ckpt_dir) / TOKENIZER, Path(ckpt_dir) / ORIGINAL / TOKENIZER, Path(ckpt_dir) / TOKENIZER_JSON]


def tokenizer_beside(ckpt_dir) -> Optional[Path]:
    """The tokenizer that sits with the weights: ckpt_dir/tokenizer.model, else
    ckpt_dir/original/tokenizer.model (Llama 3 Hugging Face folders), else ckpt_dir/tokenizer.json
    (Hugging Face folders without a tokenizer.model); None if none exists."""
    return next((p for p in _tokenizer_places(ckpt_dir) if p.is_file()), None)


def find_tokenizer(ckpt_dir, tokenizer_path) -> str:
    """tokenizer_path, or when it is None the tokenizer that sits with the weights (`tokenizer_beside`)."""
    if tokenizer_path is not None:
        return tokenizer_path
    found = tokenizer_beside(ckpt_dir)
    if found is None:
        places = _tokenizer_places(ckpt_dir)
        raise MissingFileError(
            f"no tokenizer given and none found with the weights (looked for {', '.join(str(p) for p in places)}); "
            "pass --tokenizer_path pointing at the tokenizer.model or tokenizer.json that came with the weights"
        )
    return str(found)
