"""The native library's interface as Python sees it: ctypes mirrors of forward.c's descriptors, and
the numbers the built library must report (`llama_abi`) before anything is handed to it.

A mismatch (a stale or foreign build) would make the C code read the descriptors wrong; it is
refused at load (llama.kernels.native.library), and torch's kernels run instead.
"""

import ctypes
from typing import Tuple

from .formats import INT4_GROUP

ABI_VERSION = 5  # forward.c's ABI_VERSION
BLOCK = 8  # output rows per repacked weight block (common.h's BLOCK)

_P, _I = ctypes.c_void_p, ctypes.c_int64
WEIGHTS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")  # a layer's matmuls, in layer_desc's order


class WeightDesc(ctypes.Structure):
    """forward.c's weight_desc: (N, K), the weight's data, int8 row scales."""

    _fields_ = [("N", _I), ("K", _I), ("w", _P), ("scales", _P)]


class LayerDesc(ctypes.Structure):
    """forward.c's layer_desc: norm weights, the seven matmuls, the layer's k and v cache blocks and their
    int8 scales."""

    _fields_ = [
        ("attn_norm", _P),
        ("ffn_norm", _P),
        *((name, WeightDesc) for name in WEIGHTS),
        ("k", _P),
        ("v", _P),
        ("k_scale", _P),
        ("v_scale", _P),
    ]


_MODEL_INTS = (
    "bits",
    "bf16",
    "n_layers",
    "dim",
    "n_heads",
    "kv_heads",
    "head_dim",
    "hidden",
    "vocab",
    "max_seq",
    "slots",
    "block_tokens",
    "per_slot",
    "blocks",
    "kv_bits",
)


class ModelDesc(ctypes.Structure):
    """forward.c's model_desc: sizes, the KV cache's block table, the embedding, final norm, rotary
    tables, output and layers."""

    _fields_ = [
        *((name, _I) for name in _MODEL_INTS),
        ("table", _P),
        ("eps", ctypes.c_double),
        ("embedding", _P),
        ("norm", _P),
        ("cos", _P),
        ("sin", _P),
        ("output", WeightDesc),
        ("layers", ctypes.POINTER(LayerDesc)),
    ]


def expected() -> Tuple[int, ...]:
    """What `llama_abi` must report: the version, the three descriptor sizes, GROUP and BLOCK."""
    sizes = (ctypes.sizeof(WeightDesc), ctypes.sizeof(LayerDesc), ctypes.sizeof(ModelDesc))
    return (ABI_VERSION, *sizes, INT4_GROUP, BLOCK)


def reported(lib: ctypes.CDLL) -> Tuple[int, ...]:
    """What the loaded library reports (an empty tuple if it has no `llama_abi`)."""
    if not hasattr(lib, "llama_abi"):
        return ()
    out = (ctypes.c_int64 * 6)()
    lib.llama_abi.restype = ctypes.c_int64
    lib.llama_abi.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    count = lib.llama_abi(out, 6)
    return tuple(out[:count])
