"""One-token decode steps on the CPU in one native call (llama/csrc/decode.c), for float32,
bfloat16, int8 and int4 models.

On a small model the ~40 eager operations per layer between the matmuls cost more than the
matmuls (a 12-layer dim-768 int4 step: ~4 ms of them against ~2.5 ms of weights streaming,
BENCHMARKS.md). decode.c runs the whole step (embedding, layers, norm, logits) as plain loops
around the project's matmul kernels (llama/csrc/qmatmul.c). `Llama.build` uses it for one-token
steps whenever the model qualifies (`for_model`: x86 with the native kernels built, one process,
weights on the CPU), and for prompts of a few dozen tokens without log-probs (`takes_prompt`);
longer prompts and scoring run llama.model as before.

Same math, other summation order: float32 results differ from the eager step's in the last bits,
and the tests check that greedy tokens, log-probs (to 1e-4) and sampled tokens still equal the
reference's. LLAMA_NATIVE=0 turns it off with the other native kernels: float32 then decodes
through llama.model's operations, which are the reference's.

It reads the model's own tensors (weights, norms, rotary tables, KV caches) through raw pointers
taken once here: the model must not be moved or have its tensors replaced afterwards.
"""

import ctypes
import logging
from typing import List, Optional, Union

import torch
from torch import nn

from ..kernels import dense, native
from ..model import Transformer

log = logging.getLogger(__name__)

_P, _I = ctypes.c_void_p, ctypes.c_int64


class _Matrix(ctypes.Structure):
    _fields_ = [("N", _I), ("K", _I), ("w", _P), ("scales", _P)]


class _Layer(ctypes.Structure):
    _fields_ = [
        ("attn_norm", _P),
        ("ffn_norm", _P),
        *((name, _Matrix) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")),
        ("k", _P),
        ("v", _P),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        *(
            (name, _I)
            for name in (
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
            )
        ),
        ("eps", ctypes.c_double),
        ("embedding", _P),
        ("norm", _P),
        ("cos", _P),
        ("sin", _P),
        ("output", _Matrix),
        ("layers", ctypes.POINTER(_Layer)),
    ]


BITS = {"int4": 4, "int8": 8}
DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the model dtypes decode.c takes (its `bf16` flag)


def _linears(model: Transformer) -> List[nn.Module]:
    names = {"attention": ("wq", "wk", "wv", "wo"), "feed_forward": ("w1", "w2", "w3")}
    return [model.output] + [
        getattr(getattr(layer, part), n) for layer in model.layers for part, ns in names.items() for n in ns
    ]


def weight_bits(model: Transformer) -> Union[int, str]:
    """The matmul weights' format for decode.c (4, 8: quantized with the native kernels; 16:
    bfloat16; 32: float32), or why decode.c cannot take them."""
    linears = _linears(model)
    methods = {getattr(m, "method", None) for m in linears}
    if methods == {None}:
        for dtype, bits in ((torch.bfloat16, 16), (torch.float32, 32)):
            if all(m.weight.dtype == dtype and _on_cpu(m.weight) for m in linears):
                return bits
        return "the matmul weights are not all float32 or all bfloat16 on the CPU"
    if len(methods) != 1 or any(getattr(m, "kernel", None) != "native" for m in linears):
        return "not every linear layer is quantized with a native CPU kernel"
    return BITS[methods.pop()]


def _on_cpu(t: torch.Tensor) -> bool:
    """On the CPU and contiguous: as decode.c reads it."""
    return t.device.type == "cpu" and t.is_contiguous()


def why_not(model: Transformer) -> Optional[str]:
    """None if decode.c can run this model's one-token steps, else the reason it cannot."""
    if native.library() is None:
        return "the native kernels are not available"
    if not model.layers or model.layers[0].attention.cache is None:
        return "no layers, or no KV caches set up"
    bits = weight_bits(model)
    if isinstance(bits, str):
        return bits
    if not all(getattr(m, "single_rank", False) for m in [model.tok_embeddings, *_linears(model)]):
        return "model parallel (the layers hold slices)"
    p, dtype = model.params, model.tok_embeddings.weight.dtype
    tensors = [model.tok_embeddings.weight, model.norm.weight]
    tensors += [t for layer in model.layers for t in (layer.attention_norm.weight, layer.ffn_norm.weight)]
    if dtype not in DTYPES or not all(t.dtype == dtype and _on_cpu(t) for t in tensors):
        return "the embedding and norms are not all float32 or all bfloat16 on the CPU"
    if not all(_on_cpu(t) and t.dtype == torch.float32 for t in (model.rope_cos, model.rope_sin)):
        return "the rotary tables are not float32 on the CPU"
    caches = [t for layer in model.layers for t in (layer.attention.cache.k, layer.attention.cache.v)]
    cache_strides = (p.kv_heads * p.max_seq_len * p.head_dim, p.head_dim, p.max_seq_len * p.head_dim, 1)
    if not all(t.dtype == dtype and t.stride() == cache_strides for t in caches):
        return "the KV caches are not laid out as llama.model.KVCache makes them"
    return None


def _matrix(m) -> _Matrix:
    method = getattr(m, "method", None)
    if method is None:  # bfloat16 or float32 (N, K)
        return _Matrix(m.weight.shape[0], m.weight.shape[1], m.weight.data_ptr(), None)
    in_features = m.weight.shape[1] if method == "int8" else m.weight.shape[1] * 8 // 5  # int4 blocks: 5 K / 8 bytes
    return _Matrix(m.rows, in_features, m.weight.data_ptr(), m.scales.data_ptr() if method == "int8" else None)


class NativeDecode:
    """decode_step for `Llama`: (tokens (bsz, T), start_pos) -> float32 logits (bsz, 1, vocab) of each
    row's last token; T = 1 always, a prompt (T > 1) where `takes_prompt` says so."""

    def __init__(self, model: Transformer):
        p = model.params
        self.model = model  # keeps every tensor the descriptors point into alive
        self.lib = native.library()
        layers = []
        for layer in model.layers:
            attn, ffn = layer.attention, layer.feed_forward
            layers.append(
                _Layer(
                    layer.attention_norm.weight.data_ptr(),
                    layer.ffn_norm.weight.data_ptr(),
                    *(_matrix(m) for m in (attn.wq, attn.wk, attn.wv, attn.wo, ffn.w1, ffn.w2, ffn.w3)),
                    attn.cache.k.data_ptr(),
                    attn.cache.v.data_ptr(),
                )
            )
        self.layers = (_Layer * len(layers))(*layers)
        output = _matrix(model.output)
        widest = max(m.K for layer in layers for m in (layer.wq, layer.w2))
        bits = weight_bits(model)
        # Prompts run natively too (one call instead of ~40 eager operations per layer) where decode.c's
        # matmuls are the fast choice: int4/int8 weights, and float32 ones within llama.kernels.dense' rule
        # for its prompt kernel (which decode.c runs them with); up to as many tokens in all as that
        # rule's rows, whose attention scores decode.c holds at once. bfloat16 prompts stay with
        # torch's GEMM (AMX where the CPU has it), faster than decode.c's few-row bfloat16 kernel.
        fast = bits in (4, 8) or bits == 32 and widest <= dense.NATIVE_MAX_K
        self.prompt_rows = dense.NATIVE_MAX_ROWS if fast else 0
        self.desc = _Model(
            bits,
            DTYPES[model.tok_embeddings.weight.dtype],
            p.n_layers,
            p.dim,
            p.n_heads,
            p.kv_heads,
            p.head_dim,
            layers[0].w1.N,
            output.N,
            p.max_seq_len,
            p.norm_eps,
            model.tok_embeddings.weight.data_ptr(),
            model.norm.weight.data_ptr(),
            model.rope_cos.data_ptr(),
            model.rope_sin.data_ptr(),
            output,
            self.layers,
        )

    def takes_prompt(self, tokens: torch.Tensor) -> bool:
        """Whether a prompt of these tokens (bsz, T) runs here (else llama.model runs it)."""
        return tokens.numel() <= self.prompt_rows

    def __call__(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        bsz, seqlen = tokens.shape
        ids = tokens.to(torch.int64).contiguous()
        logits = torch.empty(bsz, 1, self.desc.vocab)  # float32, as llama.model's forward returns
        rc = self.lib.llama_forward(ctypes.byref(self.desc), ids.data_ptr(), bsz, seqlen, start_pos, logits.data_ptr())
        native.check(rc)
        return logits


def for_model(model: Transformer) -> Optional[NativeDecode]:
    """A NativeDecode for `model` where decode.c can run it, else None (the reason logged at debug level)."""
    reason = why_not(model)
    if reason is not None:
        log.debug("one-token steps run in eager PyTorch: %s", reason)
        return None
    return NativeDecode(model)
