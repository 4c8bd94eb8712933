"""The project's own CPU kernels (llama/csrc: qmatmul.c, decode.c): built at first use, loaded with ctypes.

torch's CPU kernels for int8/int4 weights dequantize to floats and multiply-add; llama.cpp's are
integer dot products over activations quantized to int8 in groups of 32, which needs far fewer
instructions per weight. qmatmul.c does the latter for our int8 and int4 formats (measured in
BENCHMARKS.md), plus a one-row bfloat16 matmul (decode at batch 1) that streams a weight
faster than torch's. decode.c runs a quantized model's whole one-token step in one call
(llama.decoding.native_step).

Building: the C files are compiled once per machine with the system C compiler (`cc`, or $CC) for
the CPU it runs on (-march=native) and OpenMP, into ~/.cache/llama/ (or $LLAMA_CACHE_DIR); a name
derived from the source, the compiler and the CPU's flags keeps stale builds from being reused.
Loaded after torch, the OpenMP runtime it links is torch's own, so torch.set_num_threads governs
it. No compiler, a build that fails, a CPU without AVX2 + FMA, or LLAMA_NATIVE=0: everything
falls back to torch's kernels (llama.kernels.torch_quant) and says so once in the log.

Weights are repacked at load time into blocks of 8 output rows (the layout qmatmul.c describes);
the repacked weight takes the same bytes as the portable one, which it replaces.
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

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "qmatmul.c", CSRC / "decode.c"]  # one library; decode.c also reads qmatmul.h
HEADERS = [CSRC / "qmatmul.h"]
GROUP = 32  # activation and int4 group size (qmatmul.c's GROUP)
BLOCK = 8  # output rows per block (qmatmul.c's BLOCK)
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
    lib.llama_int4_matmul.argtypes = [p, i, i, p, i, p]
    lib.llama_int8_matmul.argtypes = [p, i, i, p, p, i, p]
    lib.llama_bf16_matmul.argtypes = [p, i, i, p, i, p]
    lib.llama_f32_matmul.argtypes = [p, i, i, p, i, p]
    lib.llama_forward.argtypes = [p, p, i, i, i, p]
    for fn in (
        lib.llama_int4_matmul,
        lib.llama_int8_matmul,
        lib.llama_bf16_matmul,
        lib.llama_f32_matmul,
        lib.llama_forward,
    ):
        fn.restype = ctypes.c_int
    return lib


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
            "no C compiler (cc) found: the int4/int8 CPU kernels of llama.kernels.native are not built; "
            "torch's slower kernels are used (install gcc to get them)"
        )
        return None
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = hashlib.sha256("\0".join([*texts, compiler, *CFLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"qmatmul-{key}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        lib = _declare(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        log.warning("building the native CPU kernels failed (%s); torch's kernels are used", detail.strip()[-300:])
        return None
    if lib.llama_native_simd() < 1:
        log.info("native CPU kernels built without AVX2/FMA for this CPU: torch's kernels are used")
        return None
    return lib


@torch.compiler.assume_constant_result  # torch.compile runs it once while tracing, not the file checks inside
def available() -> bool:
    return library() is not None


def check(rc: int) -> None:
    if rc == -1:
        raise MemoryError("a native CPU kernel could not allocate its buffers")
    if rc != 0:
        raise RuntimeError(f"a native CPU kernel failed with code {rc}")


# ---- repacking (pure tensor functions, any device) ----


def fits(in_features: int) -> bool:
    """Whether the native kernels run here for a layer with this input size (whole groups of 32)."""
    return in_features % GROUP == 0 and available()


def pad_rows(t: torch.Tensor) -> torch.Tensor:
    """Zero rows appended up to a whole block of 8 (their results are never written out)."""
    extra = -t.shape[0] % BLOCK
    return torch.cat([t, t.new_zeros(extra, *t.shape[1:])]) if extra else t.contiguous()


def int8_blocks(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 rows -> qmatmul.c's int8 blocks, as (N rounded up to 8, K) int8: each 8 rows of it
    hold one block (so shape[0] still counts output rows)."""
    q = pad_rows(q)
    n, k = q.shape
    blocks = q.reshape(n // BLOCK, BLOCK, k // GROUP, 8, 4).permute(0, 2, 3, 1, 4)  # block, group, quad, row, byte
    return blocks.contiguous().view(n, -1)


def int4_blocks(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The portable int4 form ((N, K/2) uint8, even column in the low nibble; (N, K/32, 2) scale and
    zero) -> qmatmul.c's int4 blocks as (N rounded up to 8, 5 K / 8) uint8, 8 rows per block."""
    codes = torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)
    codes, scales = pad_rows(codes), pad_rows(scales.to(torch.bfloat16))
    n, k = codes.shape
    g = k // GROUP
    # block, row, group, half (quads 0-3 / 4-7), chunk, byte -> block, group, chunk, row, byte, half
    c = codes.reshape(n // BLOCK, BLOCK, g, 2, 4, 4).permute(0, 2, 4, 1, 5, 3)
    packed = (c[..., 0] | (c[..., 1] << 4)).reshape(n // BLOCK, g, 128)
    sz = scales.reshape(n // BLOCK, BLOCK, g, 2).permute(0, 2, 3, 1).contiguous()  # block, group, scale/zero, row
    return torch.cat([packed, sz.view(torch.uint8).reshape(n // BLOCK, g, 32)], dim=-1).view(n, -1)


# ---- matmuls ----
# Each is also a torch operator (llama::native_*), so that torch.compile graphs call it as one
# opaque kernel instead of breaking the graph at a ctypes call.


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float().contiguous()


def _int4(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    rows = _rows(x)
    y = torch.empty(rows.shape[0], n)
    check(
        library().llama_int4_matmul(rows.data_ptr(), rows.shape[0], rows.shape[1], blocks.data_ptr(), n, y.data_ptr())
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def _int8(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    rows = _rows(x)
    y = torch.empty(rows.shape[0], n)
    check(
        library().llama_int8_matmul(
            rows.data_ptr(), rows.shape[0], rows.shape[1], blocks.data_ptr(), scales.data_ptr(), n, y.data_ptr()
        )
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], n)


def _few_rows(kernel, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x (..., K) @ weight.T through qmatmul.c's bfloat16 or float32 row kernel, results in `dtype`."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    n = weight.shape[0]
    y = torch.empty(rows.shape[0], n, dtype=dtype)
    check(kernel(rows.data_ptr(), rows.shape[0], rows.shape[1], weight.data_ptr(), n, y.data_ptr()))
    return y.reshape(*x.shape[:-1], n)


def _bf16(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _few_rows(library().llama_bf16_matmul, x, weight, torch.bfloat16)


def _f32(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _few_rows(library().llama_f32_matmul, x, weight, torch.float32)


_LIB = torch.library.Library("llama", "FRAGMENT")
for _name, _schema, _impl, _meta in (
    (
        "native_int4",
        "(Tensor x, Tensor blocks, int n) -> Tensor",
        _int4,
        lambda x, blocks, n: x.new_empty(*x.shape[:-1], n),
    ),
    (
        "native_int8",
        "(Tensor x, Tensor blocks, Tensor scales, int n) -> Tensor",
        _int8,
        lambda x, blocks, scales, n: x.new_empty(*x.shape[:-1], n),
    ),
    (
        "native_bf16",
        "(Tensor x, Tensor weight) -> Tensor",
        _bf16,
        lambda x, weight: x.new_empty(*x.shape[:-1], weight.shape[0]),
    ),
    (
        "native_f32",
        "(Tensor x, Tensor weight) -> Tensor",
        _f32,
        lambda x, weight: x.new_empty(*x.shape[:-1], weight.shape[0]),
    ),
):
    _LIB.define(_name + _schema)
    _LIB.impl(_name, _impl, "CPU")
    _LIB.impl(_name, _meta, "Meta")


# Eagerly the Python functions are called directly: the operator's dispatch costs ~10 us, as much
# as a small layer's whole matmul.


def int4_linear(x: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) @ W.T for W in int4 blocks (int4_blocks) with n output rows; x's dtype out."""
    return torch.ops.llama.native_int4(x, blocks, n) if torch.compiler.is_compiling() else _int4(x, blocks, n)


def int8_linear(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) @ W.T for W in int8 blocks (int8_blocks), padded float32 row scales, n output rows."""
    if torch.compiler.is_compiling():
        return torch.ops.llama.native_int8(x, blocks, scales, n)
    return _int8(x, blocks, scales, n)


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight.T for bfloat16 x and (N, K) bfloat16 weight: float32 sums rounded to bfloat16."""
    return torch.ops.llama.native_bf16(x, weight) if torch.compiler.is_compiling() else _bf16(x, weight)


def f32_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (..., K) @ weight.T for float32 x and (N, K) weight, a prompt's few dozen rows (qmatmul.c's
    prompt-sized float32 kernel: the weight streamed once, overlapped with the arithmetic)."""
    return torch.ops.llama.native_f32(x, weight) if torch.compiler.is_compiling() else _f32(x, weight)
