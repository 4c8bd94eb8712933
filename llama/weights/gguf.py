"""GGUF files (llama.cpp's format): recognised so that they are refused by name, never read.

A folder of GGUF files (or one such file) named where a checkpoint folder is expected would
otherwise be told to fetch Meta's shards, which misleads someone who has the weights already.
"""

from pathlib import Path
from typing import Optional

from ..errors import CheckpointError

SUFFIX = ".gguf"
WEIGHT_PATTERNS = ("*.pth", "*.safetensors")  # weights this package reads: a folder with them is no GGUF folder


def gguf_file(path) -> Optional[Path]:
    """`path` if it is a .gguf file; a folder's first .gguf file if it holds no weights this package reads."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        return None
    return next(iter(sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())), None)


def refuse_gguf(path) -> None:
    """CheckpointError naming the GGUF file that `path` is or holds (see gguf_file); nothing otherwise."""
    found = gguf_file(path)
    if found is not None:
        raise CheckpointError(
            f"GGUF is not supported yet: {str(found)!r} is a GGUF file (llama.cpp's format); use the original "
            "weights instead: a Meta checkpoint folder (params.json + consolidated.*.pth, e.g. from download.sh) "
            "or a Hugging Face one (config.json + *.safetensors)"
        )
