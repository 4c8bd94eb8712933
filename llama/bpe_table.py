"""tiktoken BPE tables (Llama 3's tokenizer.model): read and checked line by line."""

import base64
import binascii
from typing import Dict

from .errors import CheckpointError


def load_bpe_table(model_path: str) -> Dict[bytes, int]:
    """token bytes -> rank, read from a tiktoken BPE file and checked line by line.

    Parsed here rather than by tiktoken.load, which copies every file it reads into a cache directory.
    """
    with open(model_path, "rb") as f:
        return _parse_bpe_lines(model_path, f.read())


def _parse_bpe_lines(model_path: str, data: bytes) -> Dict[bytes, int]:
    numbered = [(i, line) for i, line in enumerate(data.splitlines(), 1) if line]
    n = len(numbered)
    ranks: Dict[bytes, int] = {}
    line_of_rank: Dict[int, int] = {}

    def bad(lineno: int, why: str) -> CheckpointError:
        return CheckpointError(
            f"{model_path!r}, line {lineno}: {why}; a tiktoken BPE table has one '<base64 token> <rank>' per "
            "line with ranks 0..n-1. The file is corrupt or truncated: download tokenizer.model again"
        )

    for lineno, line in numbered:
        fields = line.split()
        if len(fields) != 2:
            raise bad(lineno, f"expected 2 fields, got {line[:60]!r}")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except binascii.Error:
            raise bad(lineno, f"token {fields[0][:60]!r} is not valid base64") from None
        if not fields[1].isdigit():
            raise bad(lineno, f"rank {fields[1][:20]!r} is not a non-negative integer")
        rank = int(fields[1])
        if rank >= n:
            raise bad(lineno, f"rank {rank} is out of range for a table of {n} lines (0..{n - 1})")
        if rank in line_of_rank:
            raise bad(lineno, f"rank {rank} was already given on line {line_of_rank[rank]}")
        if token in ranks:
            raise bad(lineno, f"token {token!r} was already given on line {line_of_rank[ranks[token]]}")
        ranks[token] = rank
        line_of_rank[rank] = lineno
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        last = numbered[-1][0] if numbered else 0
        raise CheckpointError(
            f"{model_path!r} ends after line {last} with {n} ranks and none for byte 0x{missing[0]:02x} "
            f"({len(missing)} of the 256 single bytes have none); a byte-level BPE table ranks every byte. "
            "The file is truncated or is not a tokenizer: download tokenizer.model again"
        )
    return ranks
