"""The Llama 2 transformer: ModelArgs and the math, nothing else.

Names follow Meta's checkpoints (wq, wk, wv, wo, w1, w2, w3, tok_embeddings, attention_norm,
ffn_norm), because state-dict keys must match. This module never names a device, a launcher or
a file: weights arrive on whatever device and dtype the caller chose, and the runtime tensors
(rotary tables, KV cache) are made next to them by `setup_caches`.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel import initialize as fs_init
from torch import nn

from .parallel import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = -1  # -1: taken from the tokenizer
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    max_batch_size: int = 32
    max_seq_len: int = 2048

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight


def rope_tables(head_dim: int, end: int, theta: float = 10000.0, device=None):
    """cos and sin of pos * inv_freq[j], each (end, head_dim // 2), float32."""
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = torch.outer(torch.arange(end, device=device).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def pair_tables(cos: torch.Tensor, sin: torch.Tensor):
    """Half-width rotary tables -> full-width ones, (end, head_dim): (c, c) and (-s, +s) per pair."""
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def rotate_pairs(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
    """Rotate ADJACENT pairs (x[2j], x[2j+1]) of x (bsz, seqlen, heads, head_dim); tables from `pair_tables`,
    broadcastable to x.

    x * (c, c) + (x[2j+1], x[2j]) * (-s, +s) = (a*c - b*s, b*c + a*s): bit for bit the products and
    sums of the complex (a + ib) * (c + is) written out in reals, in 4 kernels instead of 8.
    Computed in float32 and cast back; real-valued, so it runs where complex dtypes do not (MPS).
    """
    xf = x.float()
    swapped = xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (xf * cos2 + swapped * sin2).type_as(x)


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rotate_pairs` with the half-width tables of `rope_tables`, (seqlen, head_dim // 2)."""
    cos2, sin2 = pair_tables(cos, sin)
    return rotate_pairs(x, cos2[None, :, None, :], sin2[None, :, None, :])


class KVCache(nn.Module):
    """Keys and values of one layer, (max_batch_size, max_seq_len, local_kv_heads, head_dim).

    Stored heads-major underneath (k and v are transposed views), so that attention can multiply
    the cache of every row and head in one batched matmul without first copying it.
    """

    def __init__(self, max_batch_size, max_seq_len, kv_heads, head_dim, dtype=None, device=None):
        super().__init__()
        shape = (max_batch_size, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device).transpose(1, 2), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device).transpose(1, 2), persistent=False)

    def update(self, start_pos, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (bsz, seqlen, kv_heads, head_dim) at start_pos..; return the keys and values to attend to.

        start_pos an int: the prefix up to the last position written. A one-element tensor (the
        static-shape decode step): the whole cache, shapes independent of the position; the
        caller masks the positions not yet written.
        """
        bsz, seqlen = k.shape[:2]
        if isinstance(start_pos, torch.Tensor):
            self.k[:bsz].index_copy_(1, start_pos, k)
            self.v[:bsz].index_copy_(1, start_pos, v)
            return self.k[:bsz], self.v[:bsz]
        end = start_pos + seqlen
        self.k[:bsz, start_pos:end] = k
        self.v[:bsz, start_pos:end] = v
        return self.k[:bsz, :end], self.v[:bsz, :end]


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax attention; q (bsz, seqlen, heads, head_dim), keys/values (bsz, kv_len, kv_heads, head_dim),
    mask (seqlen, kv_len) or None -> (bsz, seqlen, heads * head_dim).

    Scores are q.k / sqrt(head_dim) plus the mask, softmax in float32, as in the reference. The
    n_rep query heads that share a kv head (GQA) are stacked along the query axis instead of
    repeating the cache n_rep times (the reference's repeat_kv copy).
    """
    bsz, seqlen, heads, head_dim = q.shape
    kv_len, kv_heads = keys.shape[1], keys.shape[2]
    n_rep = heads // kv_heads
    q = q.reshape(bsz, seqlen, kv_heads, n_rep, head_dim).permute(0, 2, 3, 1, 4)
    q = q.reshape(bsz, kv_heads, n_rep * seqlen, head_dim)
    scores = torch.matmul(q, keys.permute(0, 2, 3, 1)) / math.sqrt(head_dim)
    if mask is not None:
        scores = (scores.view(bsz, kv_heads, n_rep, seqlen, kv_len) + mask).view(scores.shape)
    probs = F.softmax(scores.float(), dim=-1).type_as(q)
    out = torch.matmul(probs, values.transpose(1, 2))  # (bsz, kv_heads, n_rep * seqlen, head_dim)
    out = out.view(bsz, kv_heads, n_rep, seqlen, head_dim).permute(0, 3, 1, 2, 4)
    return out.reshape(bsz, seqlen, heads * head_dim)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        mp = fs_init.get_model_parallel_world_size()
        self.n_local_heads = args.n_heads // mp
        self.n_local_kv_heads = args.kv_heads // mp
        self.head_dim = args.head_dim
        self.wq = ColumnParallelLinear(args.dim, args.n_heads * self.head_dim, gather_output=False)
        self.wk = ColumnParallelLinear(args.dim, args.kv_heads * self.head_dim, gather_output=False)
        self.wv = ColumnParallelLinear(args.dim, args.kv_heads * self.head_dim, gather_output=False)
        self.wo = RowParallelLinear(args.n_heads * self.head_dim, args.dim)
        self.cache: Optional[KVCache] = None

    def forward(self, x, start_pos, cos, sin, mask: Optional[torch.Tensor]):
        """cos, sin: full-width rotary tables for these positions, (1, seqlen, 1, head_dim)."""
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).reshape(bsz, seqlen, self.n_local_heads, self.head_dim)
        xk = self.wk(x).reshape(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xv = self.wv(x).reshape(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xq = rotate_pairs(xq, cos, sin)
        xk = rotate_pairs(xk, cos, sin)
        keys, values = self.cache.update(start_pos, xk, xv)
        return self.wo(attend(xq, keys, values, mask))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = ColumnParallelLinear(args.dim, hidden, gather_output=False)
        self.w2 = RowParallelLinear(hidden, args.dim)
        self.w3 = ColumnParallelLinear(args.dim, hidden, gather_output=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, start_pos, cos, sin, mask):
        h = x + self.attention(self.attention_norm(x), start_pos, cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


def causal_mask(seqlen: int, start_pos: int, dtype, device) -> Optional[torch.Tensor]:
    """(seqlen, start_pos + seqlen): -inf where key position > start_pos + query index; None for one token."""
    if seqlen == 1:
        return None
    mask = torch.full((seqlen, seqlen), float("-inf"), device=device).triu(diagonal=1)
    return torch.hstack([torch.zeros((seqlen, start_pos), device=device), mask]).to(dtype)


class Transformer(nn.Module):
    def __init__(self, params: ModelArgs):
        super().__init__()
        self.params = params
        self.vocab_size = params.vocab_size
        self.n_layers = params.n_layers
        self.tok_embeddings = ParallelEmbedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = ColumnParallelLinear(params.dim, params.vocab_size)
        self.rope_cos: Optional[torch.Tensor] = None
        self.rope_sin: Optional[torch.Tensor] = None

    def setup_caches(self) -> None:
        """Make the rotary tables and per-layer KV caches next to the weights (their device and dtype).

        Call after the weights are in place; the tables stay float32 whatever the weights are.
        """
        weight = self.tok_embeddings.weight
        p = self.params
        cos, sin = rope_tables(p.head_dim, p.max_seq_len * 2, p.rope_theta, weight.device)
        self.rope_cos, self.rope_sin = pair_tables(cos, sin)
        for layer in self.layers:
            attn = layer.attention
            attn.cache = KVCache(
                p.max_batch_size, p.max_seq_len, attn.n_local_kv_heads, attn.head_dim,
                dtype=weight.dtype, device=weight.device,
            )

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """tokens (bsz, seqlen) at positions start_pos.. -> float32 logits (bsz, seqlen, vocab)."""
        seqlen = tokens.shape[1]
        cos = self.rope_cos[start_pos : start_pos + seqlen]
        sin = self.rope_sin[start_pos : start_pos + seqlen]
        mask = causal_mask(seqlen, start_pos, self.tok_embeddings.weight.dtype, tokens.device)
        return self._run(tokens, start_pos, cos, sin, mask)

    def forward_static(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per row, tokens (bsz, 1), at position `pos` (a one-element long tensor).

        The same logits as forward(tokens, int(pos)), but every shape is independent of the
        position: it attends over the whole cache with the unwritten positions masked, so
        torch.compile (and CUDA graphs) can reuse one compiled step for every position. Call
        it under torch.no_grad() (torch.compile cannot mutate the cache under inference_mode).
        """
        cos = self.rope_cos.index_select(0, pos)
        sin = self.rope_sin.index_select(0, pos)
        key_pos = torch.arange(self.params.max_seq_len, device=tokens.device)
        mask = torch.zeros(1, self.params.max_seq_len, dtype=self.tok_embeddings.weight.dtype, device=tokens.device)
        mask = mask.masked_fill(key_pos > pos, float("-inf"))
        return self._run(tokens, pos, cos, sin, mask)

    def _run(self, tokens, start_pos, cos, sin, mask) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        for layer in self.layers:
            h = layer(h, start_pos, cos, sin, mask)
        return self.output(self.norm(h)).float()
