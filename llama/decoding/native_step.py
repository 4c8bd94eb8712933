"""Decode steps (and short prompts) on the CPU in one native call (llama/kernels/csrc/forward.c), for
float32, bfloat16, int8 and int4 models.

On a small model the ~40 eager operations per layer between the matmuls cost more than the
matmuls (BENCHMARKS.md, "One native call per decode step"). forward.c runs the whole step
(embedding, layers, norm, logits) as plain loops around the project's matmul kernels. `Llama.build`
uses it for one-token steps whenever the model qualifies (`for_model`: every matmul on a native
kernel by llama.kernels.routing's rule, one process, the model's tensors on the CPU as forward.c
reads them), and for prompts of a few dozen tokens without log-probs (`takes_prompt`); longer
prompts and scoring run llama.model as before. Each row may sit in its own KV-cache slot at its
own position (`rows`: the engine's steps).

Same math, other summation order: float32 results differ from the eager step's in the last bits,
and the tests check that greedy tokens, log-probs (to 1e-4) and sampled tokens still equal the
reference's. LLAMA_NATIVE=0 turns it off with the other native kernels: float32 then decodes
through llama.model's operations, which are the reference's.

It reads the model's own tensors (weights, norms, rotary tables, KV caches) through raw pointers
taken once here (the KV cache's again whenever its pool has grown): the model must not be moved or
have its tensors replaced afterwards.
"""

import ctypes
import logging
from typing import Any, List, Optional, Sequence, Union

import torch

from ..kernels import dense, native
from ..kernels.abi import WEIGHTS, LayerDesc, ModelDesc, WeightDesc
from ..kernels.routing import format_of, runs_native
from ..model import Transformer

log = logging.getLogger(__name__)

BITS = {"int4": 4, "int8": 8, "bfloat16": 16, "float32": 32}  # forward.c's `bits` per weight format
KV_BITS = {torch.float32: 32, torch.bfloat16: 16, torch.int8: 8}  # its `kv_bits` per cache dtype
DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the model dtypes forward.c takes (its `bf16` flag)


_PART = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention"}  # the rest: feed_forward


def _layer_linears(layer: Any) -> List[Any]:
    """A layer's matmuls in forward.c's order."""
    return [getattr(getattr(layer, _PART.get(name, "feed_forward")), name) for name in WEIGHTS]


def _linears(model: Any) -> List[Any]:
    return [model.output] + [m for layer in model.layers for m in _layer_linears(layer)]


def weight_bits(model: Any) -> Union[int, str]:
    """The matmul weights' format for forward.c (4, 8: quantized with the native kernels; 16:
    bfloat16; 32: float32), or why forward.c cannot take them."""
    linears = _linears(model)
    methods = {getattr(m, "method", None) for m in linears}
    if methods == {None}:
        for dtype in (torch.bfloat16, torch.float32):
            if all(m.weight.dtype == dtype and _readable(m.weight) for m in linears):
                return BITS[format_of(dtype)]
        return "the matmul weights are not all float32 or all bfloat16 on the CPU"
    # A quantized layer took the native kernel at load time by the same rule (llama.kernels.routing).
    if len(methods) != 1 or any(getattr(m, "kernel", None) != "native" for m in linears):
        return "not every linear layer is quantized with a native CPU kernel"
    return BITS[str(methods.pop())]


def _readable(t: torch.Tensor) -> bool:
    """On a device the native kernels run on, and contiguous: as forward.c reads it."""
    return runs_native(format_of(t.dtype), t.device, t.shape[-1]) and t.is_contiguous()


def _on_cpu(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.is_contiguous()


def why_not(model: Any) -> Optional[str]:
    """None if forward.c can run this model's steps, else the reason it cannot."""
    if native.library() is None:
        return "the native kernels are not available"
    if not model.layers or model.layers[0].attention.cache is None:
        return "no layers, or no KV caches set up"
    bits = weight_bits(model)
    if isinstance(bits, str):
        return bits
    if not all(getattr(m, "single_rank", False) for m in [model.tok_embeddings, *_linears(model)]):
        return "model parallel (the layers hold slices)"
    dtype = model.tok_embeddings.weight.dtype
    tensors = [model.tok_embeddings.weight, model.norm.weight]
    tensors += [t for layer in model.layers for t in (layer.attention_norm.weight, layer.ffn_norm.weight)]
    if dtype not in DTYPES or not all(t.dtype == dtype and _on_cpu(t) for t in tensors):
        return "the embedding and norms are not all float32 or all bfloat16 on the CPU"
    if not all(_on_cpu(t) and t.dtype == torch.float32 for t in (model.rope_cos, model.rope_sin)):
        return "the rotary tables are not float32 on the CPU"
    caches = [t for layer in model.layers for t in (layer.attention.cache.k, layer.attention.cache.v)]
    if not all(t.dtype in KV_BITS and _on_cpu(t) for t in caches) or model.kv_pool.table.device.type != "cpu":
        return "the KV cache is not float32, bfloat16 or int8 on the CPU"
    return None


def _weight(m) -> WeightDesc:
    method = getattr(m, "method", None)
    if method is None:  # bfloat16 or float32 (N, K)
        return WeightDesc(m.weight.shape[0], m.weight.shape[1], m.weight.data_ptr(), None)
    in_features = m.weight.shape[1] if method == "int8" else m.weight.shape[1] * 8 // 5  # int4 blocks: 5 K / 8 bytes
    return WeightDesc(m.rows, in_features, m.weight.data_ptr(), m.scales.data_ptr() if method == "int8" else None)


def _layer(layer: Any) -> LayerDesc:
    return LayerDesc(
        layer.attention_norm.weight.data_ptr(),
        layer.ffn_norm.weight.data_ptr(),
        *(_weight(m) for m in _layer_linears(layer)),
        0,  # the cache's blocks and scales: `_cache_moved` fills them in (they move as the pool grows)
        0,
        0,
        0,
    )


class NativeDecode:
    """decode_step for `Llama`: (tokens (bsz, T), start_pos) -> float32 logits (bsz, 1, vocab) of each
    row's last token; T = 1 always, a prompt (T > 1) where `takes_prompt` says so."""

    def __init__(self, model: Any):
        p = model.params
        self.model = model  # keeps every tensor the descriptors point into alive
        self.lib = native.loaded()
        self.layers = (LayerDesc * p.n_layers)(*(_layer(layer) for layer in model.layers))
        output = _weight(model.output)
        widest = max(m.K for layer in self.layers for m in (layer.wq, layer.w2))
        bits = weight_bits(model)
        # Prompts run natively too (one call instead of ~40 eager operations per layer) where forward.c's
        # matmuls are the fast choice: int4/int8 weights, and float32 ones within llama.kernels.dense's
        # rule for its prompt kernel (which forward.c runs them with); up to as many tokens in all as
        # that rule's rows, whose attention scores forward.c holds at once. bfloat16 prompts stay with
        # torch's GEMM (AMX where the CPU has it), faster than forward.c's few-row bfloat16 kernel.
        fast = bits in (4, 8) or bits == 32 and widest <= dense.NATIVE_MAX_K
        self.prompt_rows = dense.NATIVE_MAX_ROWS if fast else 0
        # Longer prompts of int4/int8 weights go through here too, prompt_rows tokens a call: as fast as
        # llama.model's prompt (whose quantized matmuls run the same native kernels) at 512 tokens,
        # and its attention holds heads x 64 x context scores, not heads x context^2 (BENCHMARKS.md,
        # "Long contexts").
        self.chunks_prompts = bits in (4, 8)
        embedding = model.tok_embeddings.weight
        sizes = (p.n_layers, p.dim, p.n_heads, p.kv_heads, p.head_dim, self.layers[0].w1.N, output.N, p.max_seq_len)
        self.pool = model.kv_pool
        kv_bits = KV_BITS[model.layers[0].attention.cache.k.dtype]
        table = self.pool.table
        pool = (table.shape[0], self.pool.block_tokens, self.pool.per_slot, 0, kv_bits, table.data_ptr())
        self.desc = ModelDesc(
            bits, DTYPES[embedding.dtype], *sizes, *pool, p.norm_eps,
            embedding.data_ptr(), model.norm.weight.data_ptr(), model.rope_cos.data_ptr(), model.rope_sin.data_ptr(),
            output, self.layers,
        )  # fmt: skip
        self._generation = -1
        self._cache_moved()

    def _cache_moved(self) -> None:
        """Point the descriptors at the cache's storage where the pool has grown since."""
        if self._generation == self.pool.generation:
            return
        for desc, layer in zip(self.layers, self.model.layers):
            cache = layer.attention.cache
            desc.k, desc.v = cache.k.data_ptr(), cache.v.data_ptr()
            if cache.k_scale is not None:
                desc.k_scale, desc.v_scale = cache.k_scale.data_ptr(), cache.v_scale.data_ptr()
        self.desc.blocks = self.pool.capacity
        self._generation = self.pool.generation

    def prompt_chunk(self, tokens: torch.Tensor) -> int:
        """Tokens per row of each native call for a prompt of these tokens (bsz, T) too long for one
        call, or 0 where llama.model runs it."""
        return self.prompt_rows // tokens.shape[0] if self.chunks_prompts else 0

    def takes_prompt(self, tokens: torch.Tensor) -> bool:
        """Whether a prompt of these tokens (bsz, T) runs here (else llama.model runs it)."""
        return self.takes(tokens.numel())

    def takes(self, n_tokens: int) -> bool:
        """Whether a prompt of n_tokens in all (rows x tokens) runs here."""
        return n_tokens <= self.prompt_rows

    def __call__(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        bsz = tokens.shape[0]
        return self.rows(tokens.tolist(), list(range(bsz)), [start_pos] * bsz)

    def rows(self, tokens: Sequence[Sequence[int]], slots: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """B rows of T token ids, row b in KV-cache slot slots[b] from position positions[b] -> float32
        logits (B, 1, vocab) of each row's last token. Lists, not tensors: none are made for them."""
        bsz, seqlen = len(tokens), len(tokens[0])
        flat = [t for row in tokens for t in row]
        if len(flat) != bsz * seqlen or len(slots) != bsz or len(positions) != bsz:
            raise ValueError(f"rows takes B rows of equal length, a slot and a position each; got {tokens!r}")
        self.pool.ensure(slots, [p + seqlen for p in positions])
        self._cache_moved()
        logits = torch.empty(bsz, 1, self.desc.vocab)  # float32, as llama.model's forward returns
        rc = self.lib.llama_forward(
            ctypes.byref(self.desc), _int64s(flat), bsz, seqlen, _int64s(slots), _int64s(positions), logits.data_ptr()
        )
        native.check(rc)
        return logits

    def scan(self, logits: torch.Tensor) -> List[int]:
        """logits (B, T, vocab) -> per row the index of its last position's largest logit (the first of
        equal ones, as torch.argmax), or -1 where they are not all finite. Reads no tensor through
        torch where they are what rows() returns (float32, contiguous, T = 1)."""
        bsz, vocab = logits.shape[0], logits.shape[-1]
        if logits.dtype != torch.float32 or logits.shape[1] != 1 or not logits.is_contiguous():
            logits = logits[:, -1].float().contiguous()
        best = (ctypes.c_int64 * bsz)()
        self.lib.llama_logits_scan(logits.data_ptr(), bsz, vocab, best)
        return list(best)


def _int64s(values: Sequence[int]) -> "ctypes.Array[ctypes.c_int64]":
    return (ctypes.c_int64 * len(values))(*values)


def for_model(model: Transformer) -> Optional[NativeDecode]:
    """A NativeDecode for `model` where forward.c can run it, else None (the reason logged at debug level)."""
    reason = why_not(model)
    if reason is not None:
        log.debug("one-token steps run in eager PyTorch: %s", reason)
        return None
    return NativeDecode(model)
