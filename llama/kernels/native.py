"""The project's own CPU kernels (llama/kernels/csrc): built at first use, loaded with ctypes, checked,
and the matmuls they offer as torch functions.

torch's CPU kernels for int8/int4 weights dequantize to floats and multiply-add; llama.cpp's are
integer dot products over activations quantized to int8 in groups of 32, which needs far fewer
instructions per weight. csrc/matmul_int.c does the latter for our int8 and int4 formats,
csrc/matmul_float.c has few-row bfloat16 and float32 matmuls (decode) and a tiled float32 one
(short prompts) that stream a weight faster than torch's (BENCHMARKS.md). csrc/forward.c runs a
whole forward step in one call (llama.decoding.native_step).

Building: the C files are compiled once per machine with the system C compiler (`cc`, or $CC) for
the CPU it runs on (-march=native) and OpenMP, into ~/.cache/llama/ (or $LLAMA_CACHE_DIR); a name
derived from the sources, the compiler and the CPU's flags keeps stale builds from being reused,
and the loaded library must report the descriptor layout Python expects (llama.kernels.abi).
Loaded after torch, the OpenMP runtime it links is torch's own, so torch.set_num_threads governs
it. No compiler, a build that fails or does not match, a CPU without AVX2 + FMA, or
LLAMA_NATIVE=0: everything falls back to torch's kernels (llama.kernels.torch_quant,
llama.kernels.dense) and says so once in the log.
"""

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from . import abi

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "matmul_int.c", CSRC / "matmul_float.c", CSRC / "forward.c", CSRC / "repack.c"]  # one library
HEADERS = [CSRC / "common.h"]
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_CACHE_DIR") or Path.home() / ".cache" / "llama")


def _build(compiler: str, target: Path) -> None:
    """Compile to a temporary name, then rename: concurrent ranks never load a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *CFLAGS, *map(str, SOURCES), "-o", tmp, "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.llama_native_simd.restype = ctypes.c_int
    signatures = {
        "llama_matmul_int4": [p, i, i, p, i, p],
        "llama_matmul_int8": [p, i, i, p, p, i, p],
        "llama_matmul_bf16_rows": [p, i, i, p, i, p],
        "llama_matmul_f32_tiles": [p, i, i, p, i, p],
        "llama_forward": [p, p, i, i, p, p, p],
        "llama_logits_scan": [p, i, i, p],
        "llama_repack_int8": [p, i, i, p],
        "llama_repack_int4": [p, p, i, i, p],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def _load(target: Path) -> Optional[ctypes.CDLL]:
    """The library at `target`, or None (said in the log) if it is not the one this code expects."""
    lib = ctypes.CDLL(str(target))
    got, want = abi.reported(lib), abi.expected()
    if got != want:
        log.warning(
            "the native CPU kernels in %s report layout %s, not the %s this version expects (version, descriptor "
            "sizes, group, block); torch's kernels are used. Delete that file to have it rebuilt",
            target,
            list(got),
            list(want),
        )
        return None
    return _declare(lib)


@lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The loaded kernels, or None where they cannot be used here (the reason is logged once)."""
    if os.environ.get("LLAMA_NATIVE", "1") == "0":
        log.info("native CPU kernels off (LLAMA_NATIVE=0): torch's kernels are used")
        return None
    if platform.system() == "Windows" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # the SIMD paths are x86 ones; elsewhere torch's kernels are the faster choice
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning(
            "no C compiler (cc) found: the native CPU kernels (llama.kernels.native) are not built; "
            "torch's slower kernels are used (install gcc to get them)"
        )
        return None
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = hashlib.sha256("\0".join([*texts, compiler, *CFLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"llama-kernels-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = _load(target)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("building the native CPU kernels failed (%s); torch's kernels are used", detail.strip()[-300:])
        return None
    if lib is not None and lib.llama_native_simd() < 1:
        log.info("native CPU kernels built without AVX2/FMA for this CPU: torch's kernels are used")
        return None
    return lib


def available() -> bool:
    """Whether the kernels can be used here. llama.decoding.static_step marks it a constant for torch.compile
    (traced once, not the file checks inside) when it compiles: the decorator here would import torch._dynamo,
    about two seconds, at every start."""
    return library() is not None


def check(rc: int) -> None:
    if rc == -1:
        raise MemoryError("a native CPU kernel could not allocate its buffers")
    if rc == -3:
        raise ValueError("a native forward step was given a KV-cache slot or position outside the cache")
    if rc != 0:
        raise RuntimeError(f"a native CPU kernel failed with code {rc}")


def loaded() -> ctypes.CDLL:
    """The library, for callers that checked `available()` first."""
    lib = library()
    if lib is None:
        raise RuntimeError(
            "the native CPU kernels are not available here; check llama.kernels.native.available() first"
        )
    return lib


# ---- load-time repacking (csrc/repack.c: llama.kernels.repack's layouts, in one parallel pass) ----


def _padded_rows(n: int) -> int:
    return -(-n // abi.BLOCK) * abi.BLOCK


def repack_int8_blocks(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 CPU rows -> the same bytes as llama.kernels.repack.int8_blocks(q)."""
    q = q.contiguous()
    n, k = q.shape
    out = torch.empty(_padded_rows(n), k, dtype=torch.int8)
    check(loaded().llama_repack_int8(q.data_ptr(), n, k, out.data_ptr()))
    return out


def repack_int4_blocks(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The portable int4 form on the CPU -> the same bytes as llama.kernels.repack.int4_blocks(packed, scales)."""
    packed, sz = packed.contiguous(), scales.to(torch.bfloat16).contiguous()
    n, k = packed.shape[0], packed.shape[1] * 2
    out = torch.empty(_padded_rows(n), 5 * k // 8, dtype=torch.uint8)
    check(loaded().llama_repack_int4(packed.data_ptr(), sz.data_ptr(), n, k, out.data_ptr()))
    return out


# ---- matmuls ----
# Each is also a torch operator (llama::native_*), so that torch.compile graphs call it as one
# opaque kernel instead of breaking the graph at a ctypes call.


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float().contiguous()


def _int4(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    rows = _rows(x)
    y = torch.empty(rows.shape[0], n)
    check(loaded().llama_matmul_int4(rows.data_ptr(), rows.shape[0], rows.shape[1], blocks.data_ptr(), n, y.data_ptr()))
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def _int8(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    rows = _rows(x)
    y = torch.empty(rows.shape[0], n)
    k = rows.shape[1]
    check(
        loaded().llama_matmul_int8(
            rows.data_ptr(), rows.shape[0], k, blocks.data_ptr(), scales.data_ptr(), n, y.data_ptr()
        )
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def _float(kernel: str, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) @ weight.T through matmul_float.c's `kernel`, results in `dtype`."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    n = weight.shape[0]
    y = torch.empty(rows.shape[0], n, dtype=dtype)
    check(getattr(loaded(), kernel)(rows.data_ptr(), rows.shape[0], rows.shape[1], weight.data_ptr(), n, y.data_ptr()))
    return y.reshape(*x.shape[:-1], n)


def _bf16_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _float("llama_matmul_bf16_rows", x, weight, torch.bfloat16)


def _f32_tiles(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _float("llama_matmul_f32_tiles", x, weight, torch.float32)


def _like(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], n)


_LIB = torch.library.Library("llama", "FRAGMENT")
for _name, _schema, _impl, _meta in (
    ("native_int4", "(Tensor x, Tensor blocks, int n) -> Tensor", _int4, lambda x, blocks, n: _like(x, n)),
    (
        "native_int8",
        "(Tensor x, Tensor blocks, Tensor scales, int n) -> Tensor",
        _int8,
        lambda x, blocks, scales, n: _like(x, n),
    ),
    ("native_bf16_rows", "(Tensor x, Tensor weight) -> Tensor", _bf16_rows, lambda x, w: _like(x, w.shape[0])),
    ("native_f32_tiles", "(Tensor x, Tensor weight) -> Tensor", _f32_tiles, lambda x, w: _like(x, w.shape[0])),
):
    _LIB.define(_name + _schema)
    _LIB.impl(_name, _impl, "CPU")
    _LIB.impl(_name, _meta, "Meta")


# Eagerly the Python functions are called directly: the operator's dispatch costs as much as a small
# layer's whole matmul (BENCHMARKS.md, "Figures behind choices in the code").


def linear_int4_blocks(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) @ W.T for W in int4 blocks (llama.kernels.repack.int4_blocks) with n output rows;
    x's dtype out."""
    return torch.ops.llama.native_int4(x, blocks, n) if torch.compiler.is_compiling() else _int4(x, blocks, n)


def linear_int8_blocks(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) @ W.T for W in int8 blocks (llama.kernels.repack.int8_blocks), padded float32 row
    scales, n output rows; x's dtype out."""
    if torch.compiler.is_compiling():
        return torch.ops.llama.native_int8(x, blocks, scales, n)
    return _int8(x, blocks, scales, n)


def linear_bf16_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight.T for bfloat16 x and a (N, K) bfloat16 weight, a few rows (decode): float32
    sums rounded to bfloat16."""
    return torch.ops.llama.native_bf16_rows(x, weight) if torch.compiler.is_compiling() else _bf16_rows(x, weight)


def linear_f32_tiles(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight.T for float32 x and a (N, K) weight, a prompt's few dozen rows (the weight
    streamed once, overlapped with the arithmetic in register tiles)."""
    return torch.ops.llama.native_f32_tiles(x, weight) if torch.compiler.is_compiling() else _f32_tiles(x, weight)
