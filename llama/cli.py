"""What every command-line entry point shares: one `error:` line instead of a traceback, rank 0 speaks."""
import logging
import os
import sys
import time
from typing import Callable, Optional

import fire

from .backend import peer_exited, peer_failure
from .errors import LlamaError

DEBUG_ENV = "LLAMA_DEBUG"
PEER_EXIT_GRACE_S = 2.0


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def setup_logging() -> None:
    """INFO on rank 0, warnings only elsewhere (so one rank speaks for all)."""
    level = logging.INFO if is_main_rank() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _user_error(exc: BaseException) -> bool:
    return isinstance(exc, (LlamaError, ValueError, TypeError, FileNotFoundError, PermissionError))


def run(main: Callable) -> None:
    """Run `main` through fire; user mistakes exit 1 with one `error: ...` line on stderr.

    Set LLAMA_DEBUG=1 (or pass --debug) to see the traceback instead.
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    setup_logging()
    try:
        fire.Fire(main)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the point is to turn any failure into one line
        if debug:
            raise
        line = error_line(exc)
        if line is not None:
            print(line, file=sys.stderr)
        if _env_int("WORLD_SIZE", 1) > 1:
            _exit_rank(peer_exited(exc))
        sys.exit(1)


def _exit_rank(peer_exited: bool) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if peer_exited:
        # Let the launcher see the rank that really failed exit first: torchrun names the first
        # exit it observes as the root cause, and stops this rank itself within a moment.
        time.sleep(PEER_EXIT_GRACE_S)
    # Skip interpreter teardown: joining collective threads that wait on a dead peer could
    # hang this rank while the launcher waits for it.
    os._exit(1)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def error_line(exc: BaseException) -> Optional[str]:
    """The `error:` line this rank prints for `exc`, or None when another rank speaks for it.

    User mistakes are the same on every rank: rank 0 reports them (and the first rank of each
    other node, whose log is separate). Anything else (a crash, out of memory) may be this
    rank's alone, so the rank that hit it reports it, naming itself. A lost peer is only the
    echo of another rank's failure: the first rank of each node mentions it.
    """
    rank, local_rank, world = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return f"error: {_describe(exc)}"
    peer = peer_failure(exc)
    if peer is not None:
        return f"error: rank {rank}: {peer}" if local_rank == 0 else None
    if _user_error(exc):
        if rank == 0:
            return f"error: {_describe(exc)}"
        return f"error: rank {rank}: {_describe(exc)}" if local_rank == 0 else None
    return f"error: rank {rank}: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    return str(exc) if _user_error(exc) else f"{type(exc).__name__}: {exc}"
