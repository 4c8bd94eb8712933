"""Whether the buffers a run allocates up front fit on its device, and what the KV cache may take.

Llama 2 has no hard context limit (the rotary tables are built for 2 * max_seq_len positions),
so max_seq_len and max_batch_size are bounded only by memory. A buffer beyond the machine does not
fail politely (on Linux the kernel kills the process, with no message at all), so sizes whose
up-front buffers cannot fit are refused before anything is allocated. The KV cache is paged
(llama.kv_cache): on the CPU it grows with the tokens held; elsewhere its pool (kv_cache_tokens,
default max_batch_size x max_seq_len) is allocated at load.
"""

import torch

from ..errors import ConfigError
from ..kv_cache import gib
from ..model import ModelArgs
from .backend import device_memory


def cache_bytes(args: ModelArgs, mp_size: int, dtype: torch.dtype) -> int:
    """Bytes of the KV cache (k and v, every layer) on one of `mp_size` model-parallel ranks."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    local_kv_heads = max(args.kv_heads // mp_size, 1)
    return 2 * args.n_layers * args.max_batch_size * args.max_seq_len * local_kv_heads * args.head_dim * itemsize


def rope_bytes(args: ModelArgs) -> int:
    """Bytes of the float32 cos and sin tables for 2 * max_seq_len positions."""
    return 2 * (2 * args.max_seq_len) * (args.head_dim // 2) * 4


def check_fits(args: ModelArgs, mp_size: int, device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError if what is allocated up front exceeds the device's memory: the rotary
    tables, and off the CPU the KV cache's pool (allocated whole there; on the CPU it grows as
    sequences do, and a pool the machine cannot hold is a ContextMemoryError when it would grow)."""
    total = device_memory(device)
    cache = pool_bytes(args, mp_size, dtype)
    need = rope_bytes(args) + (cache if device.type != "cpu" else 0)
    if total is None or need <= total:
        return
    what = "rotary tables" if device.type == "cpu" else "KV cache and rotary tables"
    raise ConfigError(
        f"max_batch_size={args.max_batch_size} x max_seq_len={args.max_seq_len} needs "
        f"{gib(need)} per process for its {what}, more than the {gib(total)} of {device}; lower "
        "max_seq_len, max_batch_size or kv_cache_tokens, or spread the model over more processes"
    )


def pool_tokens(args: ModelArgs) -> int:
    """Positions the KV cache's pool holds: kv_cache_tokens, else every slot full."""
    return args.kv_cache_tokens or args.max_batch_size * args.max_seq_len


def pool_bytes(args: ModelArgs, mp_size: int, dtype: torch.dtype) -> int:
    """Bytes of the KV cache's pool when full, on one of `mp_size` ranks."""
    return cache_bytes(args, mp_size, dtype) * pool_tokens(args) // (args.max_batch_size * args.max_seq_len)


def describe_pool(args: ModelArgs, mp_size: int, dtype: torch.dtype) -> str:
    """What the build log says of the KV cache."""
    full, pool = cache_bytes(args, mp_size, dtype), pool_bytes(args, mp_size, dtype)
    return (
        f"KV cache: paged, grows as sequences do up to {pool_tokens(args)} tokens ({gib(pool)} per process); "
        f"every one of max_batch_size={args.max_batch_size} sequences at max_seq_len={args.max_seq_len} would "
        f"take {gib(full)}"
    )
