"""One-token decode steps of an int4/int8 model on the CPU in one native call (llama/csrc/decode.c).

On a small model the ~40 eager operations per layer between the matmuls cost more than the
matmuls (a 12-layer dim-768 int4 step: ~4 ms of them against ~2.5 ms of weights streaming,
BENCHMARKS.md). decode.c runs the whole step (embedding, layers, norm, logits) as plain loops
around qmatmul.c's matmuls. `Llama.build` uses it for one-token steps whenever the model
qualifies (`for_model`); prompts, log-probabilities and everything else run llama.model as before.

It reads the model's own tensors (weights, norms, rotary tables, KV caches) through raw pointers
taken once here: the model must not be moved or have its tensors replaced afterwards.
"""
import ctypes
import logging
from typing import Optional

import torch

from . import native
from .model import Transformer

log = logging.getLogger(__name__)

_P, _I = ctypes.c_void_p, ctypes.c_int64


class _Matrix(ctypes.Structure):
    _fields_ = [("N", _I), ("K", _I), ("w", _P), ("scales", _P)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", _P), ("ffn_norm", _P),
                *((name, _Matrix) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")), ("k", _P), ("v", _P)]


class _Model(ctypes.Structure):
    _fields_ = [*((name, _I) for name in ("bits", "n_layers", "dim", "n_heads", "kv_heads", "head_dim", "hidden",
                                          "vocab", "max_seq")),
                ("eps", ctypes.c_double), ("embedding", _P), ("norm", _P), ("cos", _P), ("sin", _P),
                ("output", _Matrix), ("layers", ctypes.POINTER(_Layer))]


BITS = {"int4": 4, "int8": 8}


def _float32(t: torch.Tensor) -> bool:
    """On the CPU, float32 and contiguous: what decode.c reads."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()


def why_not(model: Transformer) -> Optional[str]:
    """None if decode.c can run this model's one-token steps, else the reason it cannot."""
    if native.library() is None:
        return "the native kernels are not available"
    linears = [model.output] + [getattr(layer.attention, n) for layer in model.layers for n in ("wq", "wk", "wv", "wo")]
    linears += [getattr(layer.feed_forward, n) for layer in model.layers for n in ("w1", "w2", "w3")]
    if any(getattr(m, "kernel", None) != "native" for m in linears):
        return "not every linear layer is quantized with a native CPU kernel"
    if len({m.method for m in linears}) != 1:
        return "the linear layers mix quantizations"
    if not all(getattr(m, "single_rank", False) for m in [model.tok_embeddings, *linears]):
        return "model parallel (the layers hold slices)"
    p = model.params
    if not model.layers or model.layers[0].attention.cache is None:
        return "no layers, or no KV caches set up"
    tensors = [model.tok_embeddings.weight, model.norm.weight, model.rope_cos, model.rope_sin]
    tensors += [t for layer in model.layers for t in (layer.attention_norm.weight, layer.ffn_norm.weight)]
    if not all(_float32(t) for t in tensors):
        return "not float32 on the CPU"
    caches = [t for layer in model.layers for t in (layer.attention.cache.k, layer.attention.cache.v)]
    cache_strides = (p.kv_heads * p.max_seq_len * p.head_dim, p.head_dim, p.max_seq_len * p.head_dim, 1)
    if not all(t.dtype == torch.float32 and t.stride() == cache_strides for t in caches):
        return "the KV caches are not float32 laid out as llama.model.KVCache makes them"
    return None


def _matrix(m) -> _Matrix:
    in_features = m.weight.shape[1] if m.method == "int8" else m.weight.shape[1] * 8 // 5  # int4 blocks: 5 K / 8 bytes
    scales = m.scales.data_ptr() if m.method == "int8" else None
    return _Matrix(m.rows, in_features, m.weight.data_ptr(), scales)


class NativeDecode:
    """decode_step for `Llama`: (tokens (bsz, 1), start_pos) -> float32 logits (bsz, 1, vocab)."""

    def __init__(self, model: Transformer):
        p = model.params
        self.model = model  # keeps every tensor the descriptors point into alive
        self.lib = native.library()
        layers = []
        for layer in model.layers:
            attn, ffn = layer.attention, layer.feed_forward
            layers.append(_Layer(layer.attention_norm.weight.data_ptr(), layer.ffn_norm.weight.data_ptr(),
                                 *(_matrix(m) for m in (attn.wq, attn.wk, attn.wv, attn.wo, ffn.w1, ffn.w2, ffn.w3)),
                                 attn.cache.k.data_ptr(), attn.cache.v.data_ptr()))
        self.layers = (_Layer * len(layers))(*layers)
        self.desc = _Model(BITS[model.output.method], p.n_layers, p.dim, p.n_heads, model.layers[0].attention.local_kv_heads,
                           p.head_dim, model.layers[0].feed_forward.w1.rows, model.output.rows, p.max_seq_len,
                           p.norm_eps, model.tok_embeddings.weight.data_ptr(), model.norm.weight.data_ptr(),
                           model.rope_cos.data_ptr(), model.rope_sin.data_ptr(), _matrix(model.output), self.layers)

    def __call__(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        rows = tokens.reshape(-1).to(torch.int64).contiguous()
        logits = torch.empty(rows.shape[0], 1, self.desc.vocab)
        rc = self.lib.llama_decode_step(ctypes.byref(self.desc), rows.data_ptr(), rows.shape[0], start_pos,
                                        logits.data_ptr())
        native.check(rc)
        return logits


def for_model(model: Transformer) -> Optional[NativeDecode]:
    """A NativeDecode for `model` where decode.c can run it, else None (the reason logged at debug level)."""
    reason = why_not(model)
    if reason is not None:
        log.debug("one-token steps run in eager PyTorch: %s", reason)
        return None
    return NativeDecode(model)
