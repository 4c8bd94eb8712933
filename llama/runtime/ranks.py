"""One rank's failure becomes every rank's, so that none waits forever and it is reported once.

Each model-parallel rank reads its own shards, so a truncated `consolidated.01.pth` fails on
rank 1 only. Rank 1 prints nothing (rank 0 speaks for all), and rank 0 would go on to wait in a
collective: the run would die with no message. `on_all_ranks` runs a step everywhere, then
gathers every rank's outcome before anyone goes on. `peer_failure` recognises the other half:
a collective that failed because a peer went away, which is only the echo of that peer's error.
"""

from typing import Callable, List, Optional, TypeVar

import torch.distributed as dist

from ..errors import LlamaError, RankError

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


# How gloo and NCCL word a collective that failed because a peer process exited ...
_PEER_EXITED = (
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "remote process exited",
    "NCCL communicator was aborted",
)
# ... or stopped answering (hung, or its machine vanished) for longer than the timeout.
_PEER_SILENT = ("Timed out waiting", "timed out", "Socket Timeout")


def peer_exited(exc: BaseException) -> bool:
    """True if `exc` is a collective failing because another rank's process went away."""
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _PEER_EXITED)


def peer_failure(exc: BaseException) -> Optional[str]:
    """If `exc` is a collective failing because another rank died or hung, say so in one line."""
    text = str(exc).strip()
    if not isinstance(exc, RuntimeError) or not any(m in text for m in _PEER_EXITED + _PEER_SILENT):
        return None
    detail = text.splitlines()[0]
    if detail.startswith("[") and "] " in detail:  # drop gloo's "[/path/to/pair.cc:553] " prefix
        detail = detail.split("] ", 1)[1]
    detail = detail.split(". ")[0].rstrip(".")
    if peer_exited(exc):
        return (
            f"lost contact with another rank ({detail}); the rank that failed prints its own error, "
            "and torchrun's failure report names it (Root Cause)"
        )
    return (
        f"another rank stopped answering ({detail}): it hung, or its machine or network went away; "
        "if it is only slow, raise LLAMA_COLLECTIVE_TIMEOUT or LLAMA_LOAD_TIMEOUT (seconds)"
    )
