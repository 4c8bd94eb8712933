"""The Llama transformer (Llama 2 and Llama 3.x text): ModelArgs and the math, in plain PyTorch.

Names follow Meta's checkpoints (wq, wk, wv, wo, w1, w2, w3, tok_embeddings, attention_norm,
ffn_norm), because state-dict keys must match. This module knows nothing of processes, devices or
files: `Transformer(ModelArgs(...))` builds anywhere (also under `torch.device("meta")`), trains
(`forward(tokens)`: full causal attention, no cache) and decodes (`setup_caches`, then
`forward(tokens, start_pos)`). Model parallelism (llama.layers.plan) and quantization
(llama.layers.quantized) swap its layers from outside; the head counts a layer works with are read off
its weights, so a layer holding a slice of the heads needs no further telling.
"""

import math
from dataclasses import dataclass
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KV_DTYPES, BlockPool, CacheRows, PagedKV

# Llama 3.1's RoPE scaling (Meta's llama-models, `llama3/model.py`, apply_scaling): the factor
# is 8 there; the frequency band and original context are fixed.
ROPE_SCALING_FACTOR = 8.0
ROPE_LOW_FREQ_FACTOR = 1.0
ROPE_HIGH_FREQ_FACTOR = 4.0
ROPE_ORIGINAL_CONTEXT = 8192


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
    use_scaled_rope: bool = False  # Llama 3.1+: stretch the low rotary frequencies (apply_rope_scaling)
    rope_scaling_factor: Optional[float] = None  # None: Meta's 8

    max_batch_size: int = 32
    max_seq_len: int = 2048
    kv_cache_tokens: Optional[int] = None  # the KV cache pool's positions; None: max_batch_size x max_seq_len
    kv_cache_dtype: Optional[str] = None  # float32, bfloat16, int8 (llama.kv_cache); None: the model's dtype

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

    @property
    def rope_scaling(self) -> Optional[float]:
        """The RoPE scaling factor in use, or None without scaling."""
        if not self.use_scaled_rope:
            return None
        return ROPE_SCALING_FACTOR if self.rope_scaling_factor is None else self.rope_scaling_factor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._norm(x.float()).type_as(x) * self.weight


def apply_rope_scaling(inv_freq: torch.Tensor, factor: float) -> torch.Tensor:
    """Llama 3.1's frequency scaling: high frequencies kept, low ones divided by `factor`, a smooth
    blend between (wavelengths from original_context/4 to original_context)."""
    low_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_LOW_FREQ_FACTOR
    high_wavelen = ROPE_ORIGINAL_CONTEXT / ROPE_HIGH_FREQ_FACTOR
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (ROPE_ORIGINAL_CONTEXT / wavelen - ROPE_LOW_FREQ_FACTOR) / (ROPE_HIGH_FREQ_FACTOR - ROPE_LOW_FREQ_FACTOR)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    return torch.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), blended, scaled)


def rope_tables(head_dim: int, end: int, theta: float = 10000.0, device=None, scaling: Optional[float] = None):
    """cos and sin of pos * inv_freq[j], each (end, head_dim // 2), float32; `scaling`: Llama 3.1's factor."""
    exponents = torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling is not None:
        inv_freq = apply_rope_scaling(inv_freq, scaling)
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


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Softmax attention; q (bsz, seqlen, heads, head_dim), keys/values (bsz, kv_len, kv_heads, head_dim),
    mask (seqlen, kv_len), or (bsz, 1, 1, seqlen, kv_len) with a row's own, or None
    -> (bsz, seqlen, heads * head_dim).

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
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.cache: Optional[PagedKV] = None

    @property
    def local_kv_heads(self) -> int:
        """kv heads this module holds: all of them, or its slice once model-parallel."""
        return self.wk.weight.shape[0] // self.head_dim

    def forward(self, x, start_pos, cos, sin, mask: Optional[torch.Tensor]):
        """cos, sin: full-width rotary tables for these positions, (1 or bsz, seqlen, 1, head_dim).
        start_pos None: no cache (training, scoring a whole sequence); else where the cache takes
        these keys and values (PagedKV.update)."""
        bsz, seqlen, _ = x.shape
        xq = self.wq(x).reshape(bsz, seqlen, -1, self.head_dim)
        xk = self.wk(x).reshape(bsz, seqlen, -1, self.head_dim)
        xv = self.wv(x).reshape(bsz, seqlen, -1, self.head_dim)
        xq = rotate_pairs(xq, cos, sin)
        xk = rotate_pairs(xk, cos, sin)
        if start_pos is None:
            keys, values = xk, xv
        elif self.cache is None:
            raise RuntimeError("Attention has no KV cache: call Transformer.setup_caches() before decoding")
        else:
            keys, values = self.cache.update(start_pos, xk, xv)
        return self.wo(attend(xq, keys, values, mask))


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = args.ffn_hidden_dim
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
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
    kv_pool: BlockPool  # made by setup_caches
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor

    def __init__(self, params: ModelArgs):
        super().__init__()
        self.params = params
        self.vocab_size = params.vocab_size
        self.n_layers = params.n_layers
        shape = (params.vocab_size, params.dim)
        self.tok_embeddings = nn.Embedding(*shape, _weight=torch.empty(shape))
        if self.tok_embeddings.weight.device.type != "meta":
            # nn.Embedding's own init; skipped on the meta device (where loading builds the model),
            # whose first normal_ is slow to set up for weights that are about to be replaced
            # (BENCHMARKS.md, "Figures behind choices in the code").
            nn.init.normal_(self.tok_embeddings.weight)
        self.layers = nn.ModuleList(TransformerBlock(params) for _ in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)
        if self.tok_embeddings.weight.device.type != "meta":  # else made by setup_caches, next to the weights
            self.make_rope_tables()

    def make_rope_tables(self) -> None:
        """Full-width float32 rotary tables for 2 * max_seq_len positions, next to the weights.

        Buffers, so that `.to(device)` moves them, but not persistent: checkpoints never hold them.
        """
        p = self.params
        device = self.tok_embeddings.weight.device
        cos, sin = pair_tables(*rope_tables(p.head_dim, p.max_seq_len * 2, p.rope_theta, device, p.rope_scaling))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def setup_caches(self, max_tokens: Optional[int] = None, grow: Optional[bool] = None) -> None:
        """Rotary tables and the paged KV cache (llama.kv_cache) next to the weights (their device; the
        cache their dtype): a pool of at most `max_tokens` positions (default: kv_cache_tokens, else
        max_batch_size x max_seq_len, every slot full) shared by max_batch_size slots; grow: allocate as blocks are
        taken (default: on the CPU) rather than all at once.

        Call once the weights are in place (and any layers swapped); then forward(tokens, start_pos) decodes.
        """
        self.make_rope_tables()
        weight = self.tok_embeddings.weight
        p = self.params
        attns = [cast(Attention, layer.attention) for layer in self.layers]
        store = torch.empty((), dtype=KV_DTYPES[p.kv_cache_dtype] if p.kv_cache_dtype else weight.dtype)
        per_value = store.element_size() + (4 / attns[0].head_dim if p.kv_cache_dtype == "int8" else 0)
        token_bytes = int(sum(2 * a.local_kv_heads * a.head_dim * per_value for a in attns))
        self.kv_pool = BlockPool(
            p.max_batch_size,
            p.max_seq_len,
            max_tokens or p.kv_cache_tokens,
            token_bytes,
            weight.device,
            weight.device.type == "cpu" if grow is None else grow,
        )
        for attn in attns:
            attn.cache = PagedKV(
                self.kv_pool, attn.local_kv_heads, attn.head_dim, weight.dtype, weight.device, p.kv_cache_dtype
            )
        if not self.kv_pool.grow:
            self.kv_pool.allocate_all()

    def forward(self, tokens: torch.Tensor, start_pos: Optional[int] = None, last_only: bool = False) -> torch.Tensor:
        """tokens (bsz, seqlen) at positions start_pos.. -> float32 logits (bsz, seqlen, vocab).

        start_pos None: the whole sequence from position 0 with full causal attention and no
        cache (training, scoring); an int: decoding through the KV caches of `setup_caches`.
        last_only: the logits of the last position only, (bsz, 1, vocab): all that decoding
        without log-probs reads (the output layer's share of a prompt: BENCHMARKS.md, "Figures
        behind choices in the code").
        """
        seqlen = tokens.shape[1]
        first = 0 if start_pos is None else start_pos
        if start_pos is not None:
            self.kv_pool.ensure(range(tokens.shape[0]), [start_pos + seqlen] * tokens.shape[0])
        cos = self.rope_cos[first : first + seqlen]
        sin = self.rope_sin[first : first + seqlen]
        mask = causal_mask(seqlen, first, self.tok_embeddings.weight.dtype, tokens.device)
        return self._run(tokens, start_pos, cos[None, :, None], sin[None, :, None], mask, last_only)

    def forward_rows(
        self, tokens: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, last_only: bool = True
    ) -> torch.Tensor:
        """tokens (B, T) of B sequences, row b in cache slot slots[b] (a batch index of the KV caches)
        from position positions[b] -> float32 logits (B, 1, vocab) of each row's last token (all T
        with last_only=False). Each row attends causally to its own slot up to its own position, so
        rows of different sequences and lengths step together (the engine's steps)."""
        seqlen = tokens.shape[1]
        pos = positions[:, None] + torch.arange(seqlen, device=tokens.device)  # (B, T)
        span = int(positions.max()) + seqlen
        self.kv_pool.ensure(slots.tolist(), (positions + seqlen).tolist())
        key_pos = torch.arange(span, device=tokens.device)
        dtype = self.tok_embeddings.weight.dtype
        mask = torch.zeros(pos.shape[0], 1, 1, seqlen, span, dtype=dtype, device=tokens.device)
        mask = mask.masked_fill(key_pos > pos[:, None, None, :, None], float("-inf"))
        cos, sin = self.rope_cos[pos][:, :, None], self.rope_sin[pos][:, :, None]
        return self._run(tokens, CacheRows(slots, pos, span), cos, sin, mask, last_only)

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
        return self._run(tokens, pos, cos[None, :, None], sin[None, :, None], mask)

    def _run(self, tokens, start_pos, cos, sin, mask, last_only: bool = False) -> torch.Tensor:
        """cos, sin: the rotary tables of these positions, shaped to broadcast against (bsz, seqlen,
        heads, head_dim)."""
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, start_pos, cos, sin, mask)
        if last_only:
            h = h[:, -1:]
        return self.output(self.norm(h)).float()
