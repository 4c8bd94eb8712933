"""The process group's lifetime: created once per process from `backend.select`'s decision, timeouts
tightened once every rank has loaded, torn down at exit.

Timeouts: joining and loading may take long and unevenly (Runtime.load_timeout); once every rank
has loaded, a model-parallel collective that waits longer than Runtime.timeout means a peer died
or hung, and the rank gives up instead of waiting forever.
"""

import atexit
import logging
import os
from typing import Optional

import torch
import torch.distributed as dist

from .backend import Runtime
from .group import mark_ours

logger = logging.getLogger(__name__)


def init_distributed(rt: Runtime) -> None:
    """Create the default process group for `rt` unless one exists. Idempotent."""
    if dist.is_initialized():
        return
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
    if not rt.launched:
        # An in-process store: no MASTER_ADDR, no free port, and no TCP store, which Windows
        # builds without libuv cannot open.
        dist.init_process_group(rt.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=rt.load_timeout)
    else:
        if os.name == "nt":
            # torch 2.4-2.6 default the TCP store to libuv, which Windows builds lack.
            os.environ.setdefault("USE_LIBUV", "0")
        # Loading can take long and unevenly, so joining uses the generous load timeout;
        # `barrier_then_tighten_timeouts` shortens the model-parallel collectives afterwards.
        dist.init_process_group(rt.backend, rank=rt.rank, world_size=rt.world_size, timeout=rt.load_timeout)
    mark_ours()
    atexit.register(_shutdown)


def _shutdown() -> None:
    # Tearing the group down before the interpreter exits stops gloo's threads from being
    # destroyed mid-flight (which aborts the process with "terminate called ...").
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier_then_tighten_timeouts(rt: Runtime, model_parallel_group: Optional[dist.ProcessGroup]) -> None:
    """Call on every rank once its weights are loaded; model_parallel_group: fairscale's (llama.layers.parallel).

    Waits (up to the load timeout) for the slowest rank, then bounds each model-parallel
    collective by the collective timeout: every rank runs the same steps in lockstep from here,
    so a longer wait means a peer died or hung, and this rank should fail rather than hang.
    The default group keeps the long timeout for the caller's own coordination.
    """
    if rt.world_size == 1 or not dist.is_initialized():
        return
    dist.barrier()
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)  # torch >= 2.3
    if set_timeout is None or model_parallel_group is None:
        logger.debug("model-parallel collectives keep torch's default timeout")
        return
    set_timeout(rt.timeout, model_parallel_group)
