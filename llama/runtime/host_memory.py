"""Host memory while loading: what the process keeps resident of the checkpoint and of the
allocator's free lists (Linux with glibc; elsewhere these are no-ops).

Two things make a CPU load hold more than the model it builds:
- Pages of the memory-mapped checkpoint that were read to quantize or convert a tensor stay in
  the resident set beside the result (`release_mapped` drops them).
- glibc's malloc raises its mmap threshold each time a large block is freed, so after the first
  freed temporary every block up to 32 MB comes from the heap; quantizing a 7B-shaped model then
  interleaves long-lived codes with freed temporaries there, and the heap cannot shrink (BENCHMARKS.md,
  "Quantized checkpoints and memory"). `loading_allocations` fixes the threshold at 128 KB while
  loading, so that large blocks are mapped and unmapped on their own, then sets it to glibc's own
  upper bound (32 MB) for the run, which is where the dynamic threshold settles anyway.
"""

import ctypes
import ctypes.util
import mmap
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


def _libc():
    """The C library, where it has madvise (Linux and macOS); None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "madvise") else None


LIBC = _libc()
MADV_DONTNEED = 4  # Linux's value; only used where /proc/self/maps exists (Linux)


def _in_file_mapping(address: int) -> bool:
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= address < hi:
            return len(fields) >= 6 and fields[5].startswith("/")
    return False


def release_mapped(tensor: torch.Tensor) -> None:
    """Drop the pages of a tensor that lives in a memory-mapped checkpoint file from this process's
    resident set, once it has been quantized and will not be read again (else every float weight
    read stays resident beside its quantized copy). Clean file pages: a later read would fault
    them back in. Only file mappings (never anonymous memory, whose contents MADV_DONTNEED would
    erase); a no-op off Linux."""
    if LIBC is None or tensor.device.type != "cpu" or tensor.nbytes < mmap.PAGESIZE:
        return
    start = tensor.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    if _in_file_mapping(start) and _in_file_mapping(tensor.data_ptr() + tensor.nbytes - 1):
        LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(tensor.data_ptr() + tensor.nbytes - start), MADV_DONTNEED)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LOADING_MMAP_THRESHOLD = 128 * 1024  # glibc's default before any adjustment
RUN_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems


def _glibc():
    if LIBC is None or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return LIBC if hasattr(LIBC, "mallopt") and hasattr(LIBC, "malloc_trim") else None


@contextmanager
def loading_allocations() -> Iterator[None]:
    """While loading, large blocks are mapped on their own and returned to the system when freed;
    afterwards free heap memory is given back (module docstring)."""
    glibc = _glibc()
    if glibc is not None:
        glibc.mallopt(M_MMAP_THRESHOLD, LOADING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        if glibc is not None:
            glibc.mallopt(M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD)
            glibc.malloc_trim(0)
