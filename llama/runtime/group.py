"""The default process group as this process finds it: whether one exists, whether the caller made
it, and the one rule for which process speaks ("rank 0 speaks for all")."""

from typing import Optional, Tuple

import torch.distributed as dist

from .envvars import env_int

_made_here = False  # whether llama.runtime.distributed created this process's group (then it is ours)


def mark_ours() -> None:
    """Record that this package created the default group (so it is not the caller's)."""
    global _made_here
    _made_here = True


def caller_group() -> Optional[Tuple[str, int, int]]:
    """(backend, rank, world size) of a default group that the caller created, else None."""
    if dist.is_available() and dist.is_initialized() and not _made_here:
        return str(dist.get_backend()), dist.get_rank(), dist.get_world_size()
    return None


def is_main_process() -> bool:
    """Whether this process speaks for all: prints results, logs at INFO, reports user errors.

    Global rank 0 of the default process group once there is one; before that the launcher's
    RANK (torchrun sets it before the script starts); a process without either is alone.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_int("RANK", 0, strict=False) == 0
