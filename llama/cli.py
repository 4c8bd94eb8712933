"""What every command-line entry point shares: one `error:` line instead of a traceback, rank 0 speaks."""
import logging
import os
import sys
from typing import Callable

import fire

from .errors import LlamaError

DEBUG_ENV = "LLAMA_DEBUG"


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
        if is_main_rank():
            kind = "" if _user_error(exc) else f"{type(exc).__name__}: "
            print(f"error: {kind}{exc}", file=sys.stderr)
        sys.exit(1)
