"""The safetensors files of a Hugging Face directory: which file holds which tensor, read lazily.

Files are opened with the `safetensors` library, which memory-maps them: a tensor read here is a
view of the file's pages (private to this process, never written back), and a slice reads only
the pages it covers.
"""

import json
import math
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, MissingFileError
from ..validation import whole_number

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class TensorFiles:
    """Tensor name -> the file holding it, for one directory; every file is opened (and so
    checked to be complete) before anything is read. Use as a context manager."""

    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = Path(ckpt_dir)
        self._handles: dict = {}
        single = self.ckpt_dir / SINGLE_FILE
        if single.is_file():
            self.where = {name: single for name in self._open(single).keys()}
        else:
            self.where = self._from_index(self.ckpt_dir / INDEX_FILE)

    def _from_index(self, index: Path) -> Dict[str, Path]:
        if not index.is_file():
            raise MissingFileError(
                f"neither {SINGLE_FILE} nor {INDEX_FILE} in {str(self.ckpt_dir)!r}; a Hugging Face directory "
                "holds its weights in safetensors files (pytorch_model.bin is not supported: re-save the model "
                "with save_pretrained(..., safe_serialization=True))"
            )
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            where = {name: self.ckpt_dir / file for name, file in weight_map.items()}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{str(index)!r} is not a safetensors index (a JSON object with a weight_map; {exc!r}); restore "
                "the file that came with the model"
            ) from None
        for path in sorted(set(where.values())):
            if not path.is_file():
                raise MissingFileError(
                    f"{str(path)!r}, named in {str(index)!r}, not found; the download is incomplete: fetch that file"
                )
        for name, path in where.items():
            if name not in self._open(path).keys():
                raise CheckpointError(
                    f"{str(path)!r} has no tensor {name!r}, though {INDEX_FILE} says it does; the files do not "
                    "belong together: download them again"
                )
        return where

    def _open(self, path: Path):
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as exc:
                size = path.stat().st_size if path.exists() else 0
                raise CheckpointError(
                    f"cannot read {str(path)!r} ({size} bytes): truncated, corrupted or not a safetensors file "
                    f"({exc}); download it again"
                ) from None
        return self._handles[path]

    def shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self._open(self.where[name]).get_slice(name).get_shape())

    def read(self, name: str, index: Tuple[slice, ...]) -> torch.Tensor:
        """tensor[index], a view of the mapped file where the slice allows."""
        return self._open(self.where[name]).get_slice(name)[index]

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a tensor, read into memory of their own with plain file reads (no mapping).

        For weights that must be rearranged anyway (q and k): a mapped read would keep the file's
        pages resident beside the rearranged copy (BENCHMARKS.md, "Lean loading").
        """
        path = self.where[name]
        entry, data_start = _header(path)[name], _data_start(path)
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        buffer = bytearray((stop - start) * row_bytes)
        with open(path, "rb") as f:
            f.seek(data_start + entry["data_offsets"][0] + start * row_bytes)
            f.readinto(buffer)
        return torch.frombuffer(buffer, dtype=dtype).view(stop - start, *shape[1:])

    def __enter__(self) -> "TensorFiles":
        return self

    def __exit__(self, *exc) -> None:
        # Tensors already read keep their mapping alive; closing only drops the handles.
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles.clear()


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def _header(path: Path) -> dict:
    """The JSON header of a safetensors file (its layout is the format's documented one)."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(size))


def check_rank(world, rank) -> None:
    whole_number("world", world)
    whole_number("rank", rank, minimum=0, below=world, fix=f" (world={world})")
