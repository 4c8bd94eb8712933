"""The KV cache, paged: every layer's keys and values live in blocks of BLOCK_TOKENS positions, and a
sequence holds only the blocks its tokens fill.

A `BlockPool` (one per model, shared by its layers) keeps the block table: row s lists the blocks
of cache slot s in position order (-1: none yet), the same block ids in every layer. A slot takes
blocks as its sequence grows (`ensure`) and gives them back when it ends or is cut short
(`truncate`), so the slots of a batch (the engine's sequences, `Llama.generate`'s rows) share one
pool and `max_seq_len` costs nothing until a sequence gets there (the pattern of vLLM's paged
attention and llama.cpp's unified cache). The pool holds at most `max_blocks` blocks; asking for
more is a ContextMemoryError naming the figures. On the CPU the layers' storage starts small and
doubles as blocks are taken (freshly mapped memory costs nothing until written, but the cache is
zero-filled so that masked positions never hold NaNs); elsewhere (CUDA, MPS: torch.compile and
CUDA graphs need storage that does not move) the whole pool is allocated at once.

`PagedKV` is one layer's storage, (blocks, kv_heads, BLOCK_TOKENS, head_dim) for k and for v:
heads-major within a block, as llama/kernels/csrc/forward.c reads it; in the model's dtype, or in
bfloat16 or int8 (one scale per position and head) whatever the weights are (`kv_cache_dtype`). For llama.model's eager
attention it gathers a row's blocks into the (rows, positions, kv_heads, head_dim) keys and values
the reference's `attend` takes: the same numbers at the same places, one copy per call.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from .errors import ContextMemoryError

BLOCK_TOKENS = 256  # positions per block (fewer when max_seq_len is shorter)
FIRST_BLOCKS = 16  # a growing pool's first allocation, in blocks


def blocks_for(tokens: int, block_tokens: int) -> int:
    return -(-tokens // block_tokens)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def available_host_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class CacheRows:
    """Where a step of several sequences reads and writes the cache: B rows of T tokens, row b in
    cache slot slots[b] at positions[b] (its T positions); each row attends to keys 0..span-1 of
    its slot, the caller masking what lies beyond its own position."""

    slots: torch.Tensor  # (B,) long
    positions: torch.Tensor  # (B, T) long
    span: int


class BlockPool:
    def __init__(
        self,
        n_slots: int,
        max_seq_len: int,
        max_tokens: Optional[int],
        token_bytes: int,
        device=None,
        grow: bool = True,
        block_tokens: Optional[int] = None,
    ):
        """n_slots: rows of the block table; max_tokens: the pool's size in positions (rounded up to
        whole blocks; None: every slot full at max_seq_len); token_bytes: what one position takes in
        every layer (k and v), for the figures the errors quote; grow: allocate storage as blocks are
        taken (else all at once)."""
        self.max_seq_len = max_seq_len
        self.block_tokens = min(block_tokens or BLOCK_TOKENS, max_seq_len)
        self.per_slot = blocks_for(max_seq_len, self.block_tokens)
        full = n_slots * self.per_slot
        self.max_blocks = full if max_tokens is None else max(1, blocks_for(max_tokens, self.block_tokens))
        self.block_bytes = token_bytes * self.block_tokens
        self.device = device
        self.table = torch.full((n_slots, self.per_slot), -1, dtype=torch.long, device=device)
        self.held: List[List[int]] = [[] for _ in range(n_slots)]
        self.free: List[int] = []  # block ids not held by any slot, the lowest last (taken first)
        self.capacity = 0  # blocks every layer's storage has room for
        self.generation = 0  # bumped whenever the storage moves (native steps re-read its address)
        self.layers: List["PagedKV"] = []
        self.grow = grow

    @property
    def used(self) -> int:
        return sum(len(h) for h in self.held)

    @property
    def available(self) -> int:
        """Blocks a slot could still take: free ones and those the storage may still grow by."""
        return len(self.free) + self.max_blocks - self.capacity

    def describe(self) -> str:
        return (
            f"the KV cache holds {self.max_blocks} blocks of {self.block_tokens} tokens "
            f"({self.max_blocks * self.block_tokens} tokens, {gib(self.max_blocks * self.block_bytes)}), "
            f"{self.used} in use"
        )

    def missing(self, slot: int, length: int) -> int:
        """Blocks slot `slot` lacks to hold positions 0..length-1."""
        return max(0, blocks_for(length, self.block_tokens) - len(self.held[slot]))

    def ensure(self, slots: Sequence[int], lengths: Sequence[int]) -> None:
        """Give each slot the blocks for positions 0..length-1; ContextMemoryError (and nothing
        taken) if the pool cannot."""
        need = sum(self.missing(s, n) for s, n in zip(slots, lengths))
        if need == 0:
            return
        if max(lengths) > self.max_seq_len:
            raise ContextMemoryError(f"{max(lengths)} tokens do not fit in max_seq_len={self.max_seq_len}")
        if need > self.available:
            raise ContextMemoryError(
                f"context memory exhausted: {need} more blocks of {self.block_tokens} tokens "
                f"({gib(need * self.block_bytes)}) are needed for {max(lengths)} tokens, but {self.describe()} "
                "and none is free; wait for other requests to end, ask for fewer tokens, or build with a "
                "larger kv_cache_tokens"
            )
        if need > len(self.free):
            self._grow(need - len(self.free))
        for s, n in zip(slots, lengths):
            for _ in range(self.missing(s, n)):
                block = self.free.pop()
                self.table[s, len(self.held[s])] = block
                self.held[s].append(block)

    def truncate(self, slot: int, length: int = 0) -> None:
        """Slot `slot` keeps the blocks of positions 0..length-1 only; the rest go back to the pool."""
        keep = blocks_for(length, self.block_tokens)
        gone = self.held[slot][keep:]
        if not gone:
            return
        del self.held[slot][keep:]
        self.table[slot, keep : keep + len(gone)] = -1
        self.free.extend(gone)
        self.free.sort(reverse=True)

    def allocate_all(self) -> None:
        """Storage for the whole pool now (where it must not move later)."""
        if self.capacity < self.max_blocks:
            self._grow(self.max_blocks - self.capacity)

    def _grow(self, short: int) -> None:
        if not self.grow:
            size = self.max_blocks
        else:
            size = min(self.max_blocks, max(self.capacity * 2, self.capacity + short, FIRST_BLOCKS))
        extra = (size - self.capacity) * self.block_bytes
        host = available_host_memory() if self.grow and str(self.device or "cpu").startswith("cpu") else None
        if host is not None and extra > host:
            raise ContextMemoryError(
                f"context memory exhausted: growing the KV cache to {size * self.block_tokens} tokens takes "
                f"{gib(extra)} more, and this machine has {gib(host)} available ({self.describe()}); wait for "
                "other requests to end, ask for fewer tokens, or build with a smaller kv_cache_tokens"
            )
        for layer in self.layers:
            layer.resize(size)
        self.free.extend(range(size - 1, self.capacity - 1, -1))
        self.free.sort(reverse=True)
        self.capacity = size
        self.generation += 1


KV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}  # kv_cache_dtype's choices


def quantize_int8(x: torch.Tensor):
    """x (..., head_dim) -> (int8 codes, float32 scales (...)): one scale per head vector, max|x| / 127."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(xf / safe[..., None]).clamp(-127, 127).to(torch.int8), scale


class PagedKV(nn.Module):
    """One layer's keys and values in the pool's blocks, (capacity, kv_heads, block_tokens, head_dim),
    stored in the model's dtype or in `store` (kv_cache_dtype: float32, bfloat16, or int8 with one
    float32 scale per position and head, k_scale and v_scale (capacity, kv_heads, block_tokens)).
    Attention always reads them back in the model's dtype."""

    k: torch.Tensor
    v: torch.Tensor
    k_scale: Optional[torch.Tensor]
    v_scale: Optional[torch.Tensor]

    def __init__(self, pool: BlockPool, kv_heads: int, head_dim: int, dtype=None, device=None, store=None):
        super().__init__()
        self.pool = pool
        self.dtype = dtype or torch.get_default_dtype()
        self.store = KV_DTYPES[store] if store is not None else self.dtype
        shape = (0, kv_heads, pool.block_tokens, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=self.store, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=self.store, device=device), persistent=False)
        scales = self.store == torch.int8
        for name in ("k_scale", "v_scale"):
            self.register_buffer(name, torch.zeros(shape[:3], device=device) if scales else None, persistent=False)
        pool.layers.append(self)

    def _names(self):
        return ("k", "v", "k_scale", "v_scale") if self.k_scale is not None else ("k", "v")

    def resize(self, blocks: int) -> None:
        """Room for `blocks` blocks, the blocks held so far copied over (and the new ones zeroed).

        Normal tensors even when the pool grows under inference mode: the compiled static step
        (llama.decoding.static_step) writes them outside it."""
        with torch.inference_mode(False), torch.no_grad():
            for name in self._names():
                old = getattr(self, name)
                new = torch.zeros((blocks, *old.shape[1:]), dtype=old.dtype, device=old.device)
                new[: old.shape[0]] = old
                setattr(self, name, new)
                del old

    def update(self, start_pos: Union[int, torch.Tensor, CacheRows], k: torch.Tensor, v: torch.Tensor):
        """Store k, v (bsz, seqlen, kv_heads, head_dim) and return the keys and values to attend to,
        (bsz, kv_len, kv_heads, head_dim); the caller has given the slots their blocks (BlockPool.ensure).

        start_pos an int: rows 0..bsz-1 from that position; the prefix up to the last position
        written. A one-element tensor (the static-shape decode step): every position up to
        max_seq_len, shapes independent of the position; the caller masks the positions not yet
        written. CacheRows: each row at its own slot and positions, keys 0..span-1 of its slot.
        """
        bsz, seqlen = k.shape[:2]
        if isinstance(start_pos, CacheRows):
            slots, positions, span = start_pos.slots, start_pos.positions, start_pos.span
        else:
            slots = torch.arange(bsz, device=k.device)
            first = start_pos if isinstance(start_pos, int) else start_pos.reshape(1, 1)
            positions = (first + torch.arange(seqlen, device=k.device)).expand(bsz, seqlen)
            span = start_pos + seqlen if isinstance(start_pos, int) else self.pool.max_seq_len
        bt = self.pool.block_tokens
        blocks, offsets = self.pool.table[slots[:, None], positions // bt], positions % bt
        self._put(self.k, self.k_scale, blocks, offsets, k)
        self._put(self.v, self.v_scale, blocks, offsets, v)
        return self._gather(self.k, self.k_scale, slots, span), self._gather(self.v, self.v_scale, slots, span)

    @staticmethod
    def _put(store: torch.Tensor, scales: Optional[torch.Tensor], blocks, offsets, x: torch.Tensor) -> None:
        if scales is None:
            store[blocks, :, offsets] = x.to(store.dtype)
        else:
            store[blocks, :, offsets], scales[blocks, :, offsets] = quantize_int8(x)

    def _gather(self, store: torch.Tensor, scales: Optional[torch.Tensor], slots: torch.Tensor, span: int):
        n = blocks_for(span, self.pool.block_tokens)
        ids = self.pool.table[slots, :n].clamp(min=0)  # unheld blocks read as block 0: masked anyway
        rows = store[ids]  # (B, n, kv_heads, block_tokens, head_dim)
        if scales is not None:
            rows = rows.float() * scales[ids][..., None]
        rows = rows.to(self.dtype)
        B, _, kvh, bt, hd = rows.shape
        return rows.transpose(1, 2).reshape(B, kvh, n * bt, hd)[:, :, :span].transpose(1, 2)
