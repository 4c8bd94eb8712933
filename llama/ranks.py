"""One rank's failure becomes every rank's, so that none waits forever and rank 0 can report it.

Each model-parallel rank reads its own shards, so a truncated `consolidated.01.pth` fails on
rank 1 only. Rank 1 prints nothing (rank 0 speaks for all), and rank 0 would go on to wait in a
collective: the run would die with no message. `on_all_ranks` runs a step everywhere, then
gathers every rank's outcome before anyone goes on.
"""
from typing import Callable, List, Optional, TypeVar

import torch.distributed as dist

from .errors import LlamaError, RankError

T = TypeVar("T")

# Set on an exception that a rank other than 0 must print itself: its peers could not be
# reached to learn of it, so nobody else will.
REPORT_ON_ANY_RANK = "llama_report_on_any_rank"


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LlamaError) else f"{type(exc).__name__}: {exc}"


def _gather(outcome: Optional[str], own: Optional[BaseException]) -> List[Optional[str]]:
    outcomes: List[Optional[str]] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(outcomes, outcome)
    except Exception:  # noqa: BLE001 - a peer died or timed out; our own error matters more
        if own is None:
            raise
        setattr(own, REPORT_ON_ANY_RANK, True)
        raise own from None
    return outcomes


def on_all_ranks(step: Callable[..., T], *args) -> T:
    """step(*args) on every rank of the default group; if any rank fails, every rank raises.

    A failing rank re-raises its own exception; the others raise RankError naming the first
    failed rank and its message (which rank 0 then prints).
    """
    own: Optional[BaseException] = None
    try:
        result = step(*args)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        own = exc
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if own is not None:
            raise own
        return result
    outcomes = _gather(None if own is None else _describe(own), own)
    if own is not None:
        raise own
    failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
    if failed:
        rank, message = failed[0]
        others = f" (and {len(failed) - 1} more ranks failed)" if len(failed) > 1 else ""
        raise RankError(f"rank {rank}: {message}{others}")
    return result
