"""Whether the buffers a run allocates up front (KV cache, rotary tables) fit on its device.

Llama 2 has no hard context limit (the rotary tables are built for 2 * max_seq_len positions),
so max_seq_len and max_batch_size are bounded only by memory. The cache is zero-filled at load
time, so a size beyond the machine does not fail politely: on Linux the kernel kills the process
(no message at all). We refuse such sizes before allocating anything.
"""

import torch

from ..errors import ConfigError
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


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(args: ModelArgs, mp_size: int, device: torch.device, dtype: torch.dtype) -> None:
    """Raise ConfigError if the KV cache and rotary tables alone exceed the device's memory."""
    total = device_memory(device)
    need = cache_bytes(args, mp_size, dtype) + rope_bytes(args)
    if total is None or need <= total:
        return
    raise ConfigError(
        f"max_batch_size={args.max_batch_size} x max_seq_len={args.max_seq_len} needs "
        f"{gib(need)} per process for its KV cache and rotary tables, more than the {gib(total)} of "
        f"{device}; lower max_seq_len or max_batch_size, or spread the model over more processes"
    )
