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


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ADJACENT pairs (x[2j], x[2j+1]) of x (bsz, seqlen, heads, head_dim) by pos*inv_freq[j].

    The real-valued form of the reference's complex product (a + ib) * (cos + i sin), computed
    in float32 and cast back, so it runs where complex dtypes do not (Apple MPS).
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    cos = cos[None, :, None, :]
    sin = sin[None, :, None, :]
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(bsz, seqlen, kv_heads, head_dim) -> (bsz, seqlen, kv_heads * n_rep, head_dim)."""
    if n_rep == 1:
        return x
    bsz, seqlen, kv_heads, head_dim = x.shape
    return x[:, :, :, None, :].expand(bsz, seqlen, kv_heads, n_rep, head_dim).reshape(
        bsz, seqlen, kv_heads * n_rep, head_dim
    )


class KVCache(nn.Module):
    """Keys and values of one layer, (max_batch_size, max_seq_len, local_kv_heads, head_dim)."""

    def __init__(self, max_batch_size, max_seq_len, kv_heads, head_dim, dtype=None, device=None):
        super().__init__()
        shape = (max_batch_size, max_seq_len, kv_heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v at start_pos.. and return all keys and values up to the last one written."""
        bsz, seqlen = k.shape[:2]
        end = start_pos + seqlen
        self.k[:bsz, start_pos:end] = k
        self.v[:bsz, start_pos:end] = v
        return self.k[:bsz, :end], self.v[:bsz, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        mp = fs_init.get_model_parallel_world_size()
        self.n_local_heads = args.n_heads // mp
        self.n_local_kv_heads = args.kv_heads // mp
        self.n_rep = self.n_local_heads // self.n_local_kv_heads
        self.head_dim = args.head_dim
        self.wq = ColumnParallelLinear(args.dim, args.n_heads * self.head_dim, gather_output=False)
        self.wk = ColumnParallelLinear(args.dim, args.kv_heads * self.head_dim, gather_output=False)
        self.wv = ColumnParallelLinear(args.dim, args.kv_heads * self.head_dim, gather_output=False)
        self.wo = RowParallelLinear(args.n_heads * self.head_dim, args.dim)
        self.cache: Optional[KVCache] = None

    def forward(self, x, start_pos: int, cos, sin, mask: Optional[torch.Tensor]):
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
        xk = self.wk(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xv = self.wv(x).view(bsz, seqlen, self.n_local_kv_heads, self.head_dim)
        xq = apply_rotary_emb(xq, cos, sin)
        xk = apply_rotary_emb(xk, cos, sin)

        keys, values = self.cache.update(start_pos, xk, xv)
        keys = repeat_kv(keys, self.n_rep).transpose(1, 2)  # (bsz, heads, kv_len, head_dim)
        values = repeat_kv(values, self.n_rep).transpose(1, 2)
        xq = xq.transpose(1, 2)  # (bsz, heads, seqlen, head_dim)

        scores = torch.matmul(xq, keys.transpose(2, 3)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        scores = F.softmax(scores.float(), dim=-1).type_as(xq)
        output = torch.matmul(scores, values)
        output = output.transpose(1, 2).contiguous().view(bsz, seqlen, -1)
        return self.wo(output)


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

    def forward(self, x, start_pos: int, cos, sin, mask):
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
        self.rope_cos, self.rope_sin = rope_tables(p.head_dim, p.max_seq_len * 2, p.rope_theta, weight.device)
        for layer in self.layers:
            attn = layer.attention
            attn.cache = KVCache(
                p.max_batch_size, p.max_seq_len, attn.n_local_kv_heads, attn.head_dim,
                dtype=weight.dtype, device=weight.device,
            )

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """tokens (bsz, seqlen) at positions start_pos.. -> float32 logits (bsz, seqlen, vocab)."""
        _, seqlen = tokens.shape
        h = self.tok_embeddings(tokens)
        cos = self.rope_cos[start_pos : start_pos + seqlen]
        sin = self.rope_sin[start_pos : start_pos + seqlen]
        mask = causal_mask(seqlen, start_pos, h.dtype, tokens.device)
        for layer in self.layers:
            h = layer(h, start_pos, cos, sin, mask)
        return self.output(self.norm(h)).float()
