"""Where the offline tools (reshard, convert, quantize) write: one rule for DST.

DST must be a new folder, or an existing one replaced with --force; it must not be SRC, lie inside
SRC or contain it. The output is written into a temporary folder beside DST and renamed into place
only once complete, so an interrupted or failed run leaves no half-written DST (and, with --force,
the old DST until the new one is whole). The folder and its files get the permissions of normally
created ones (the umask applies), not the owner-only modes of a temporary folder or file.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..weights.meta import ORIGINAL
from ..weights.tokenizer_files import TOKENIZER, TOKENIZER_JSON, tokenizer_beside


def check_destination(src: Path, dst: Path, force: bool, src_name: str = "SRC", dst_name: str = "DST") -> None:
    """Raise ConfigError unless the rule above allows writing `dst` from `src` (names as the tool calls them)."""
    src_real, dst_real = Path(src).resolve(), Path(dst).resolve()
    if dst_real == src_real or src_real in dst_real.parents or dst_real in src_real.parents:
        how = "is" if dst_real == src_real else "lies inside" if src_real in dst_real.parents else "contains"
        raise ConfigError(
            f"{dst_name} {str(dst)!r} {how} {src_name} {str(src)!r}; write the output to a folder outside the source"
        )
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst_name} {str(dst)!r} is a file; name a new folder")
    if dst.exists() and not force:
        raise ConfigError(
            f"{dst_name} {str(dst)!r} already exists; pass --force to replace it, or choose a new directory"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_modes(work: Path) -> None:
    """The modes a folder and files made with open() and mkdir would have under the umask: neither
    mkdtemp's 0o700 nor the 0o600 of writers that go through a temporary file (safetensors)."""
    mask = _umask()
    for path in [work, *work.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def written_beside(dst: Path) -> Iterator[Path]:
    """A temporary folder beside `dst` to write into; renamed to `dst` when the block succeeds
    (replacing an existing `dst`), removed when it fails."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    try:
        yield work
        _normal_modes(work)
        _move_into_place(work, dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _move_into_place(work: Path, dst: Path) -> None:
    if not dst.exists():
        work.rename(dst)
        return
    # --force: set the old DST aside first, so that a failure here still leaves one whole DST.
    aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    dst.rename(aside / "old")
    work.rename(dst)
    shutil.rmtree(aside, ignore_errors=True)


def copy_tokenizer(src: Path, out: Path, layout: str) -> None:
    """The tokenizer that sits with SRC's weights (SRC/tokenizer.model or SRC/original/tokenizer.model),
    if any, into `out` where `layout` ("meta" or "hf") keeps it: Meta's folders and Llama 2 Hugging
    Face ones at the top (transformers reads a top-level tokenizer.model as SentencePiece), Llama 3's
    tiktoken table in a Hugging Face folder under original/, as Meta's repositories there do. A
    Hugging Face tokenizer.json in SRC goes along too, to the top of `out` in either layout."""
    if (Path(src) / TOKENIZER_JSON).is_file():
        shutil.copyfile(Path(src) / TOKENIZER_JSON, out / TOKENIZER_JSON)
    found = tokenizer_beside(src)
    if found is None:
        return
    from ..tokenizer import is_bpe_table

    if found.name == TOKENIZER_JSON:
        return  # copied above
    if layout == "hf" and is_bpe_table(str(found)):
        target = out / ORIGINAL / TOKENIZER
    else:
        target = out / TOKENIZER
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(found, target)
