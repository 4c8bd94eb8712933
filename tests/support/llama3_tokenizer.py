"""Meta's real Llama 3 tokenizer for tests, and small BPE tables cut from it.

The file ships in the `llama-models==0.3.0` wheel (a test-only dependency): nothing is downloaded.
"""

from pathlib import Path
from typing import List


def llama3_tokenizer_path() -> Path:
    import llama_models

    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; install the test extras: pip install -e '.[test]'")
    return path


def llama3_lines(n: int) -> List[bytes]:
    """The first n lines of the real table (its first 256 ranks are the 256 single bytes)."""
    with open(llama3_tokenizer_path(), "rb") as f:
        return [f.readline() for _ in range(n)]


def write_bpe(path: Path, lines: List[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path
