"""What every command-line entry point shares: its arguments checked before it runs, --help, one
`error:` line instead of a traceback, rank 0 speaks, and the exit status.

It imports nothing of the generator, nor torch until a command runs (the rank rules need
torch.distributed), so offline tools (`python -m llama.reshard`) start quickly and every --help
renders without torch.
"""

import json
import logging
import os
import sys
import time
from typing import Callable, Mapping, Optional

import fire

from ..errors import LlamaError
from ..runtime.envvars import env_int
from .flags import Flag, check_args, render_help, wants_help

DEBUG_ENV = "LLAMA_DEBUG"
# torchrun gives each worker a file to describe its failure in; its summary then shows our
# message instead of a pointer to its docs.
LAUNCHER_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
EXIT_GRACE_S = 2.0


def setup_logging() -> None:
    """INFO on rank 0, warnings only elsewhere (so one rank speaks for all)."""
    from ..runtime.group import is_main_process

    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _user_error(exc: BaseException) -> bool:
    return isinstance(exc, (LlamaError, ValueError, TypeError, FileNotFoundError, PermissionError))


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text or not _user_error(exc):
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text


def report(exc: BaseException) -> Optional[str]:
    """Print this rank's `error:` line, if it is the one to speak, and hand it to the launcher; -> the line."""
    line = error_line(exc)
    if line is None:
        return None
    print(line, file=sys.stderr, flush=True)
    error_file = os.environ.get(LAUNCHER_ERROR_FILE)
    if error_file:
        message = line[len("error: ") :]
        try:
            with open(error_file, "w") as f:  # the layout torch.distributed.elastic writes itself
                info = {"py_callstack": message, "timestamp": str(int(time.time()))}
                json.dump({"message": {"message": message, "extraInfo": info}}, f)
        except OSError:
            pass  # the error line above already said it
    return line


def run(main: Callable, flags: Optional[Mapping[str, Flag]] = None, prog: Optional[str] = None) -> None:
    """Run `main` through fire; user mistakes exit 1 with one `error: ...` line on stderr.

    flags: --help's description of each parameter of `main`; prog: the command as the user
    types it (default `python SCRIPT`). Set LLAMA_DEBUG=1 (or pass --debug) to see the
    traceback instead of the error line.
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    flags = flags or {}
    prog = prog or f"python {os.path.basename(sys.argv[0])}"
    argv = sys.argv[1:]
    if wants_help(argv):
        print(render_help(main, flags, prog, main.__globals__.get("__doc__") or ""))
        return
    setup_logging()
    try:
        fire.Fire(main, command=check_args(main, argv, flags, prog), name=prog)
    except KeyboardInterrupt:
        interrupted()
    except Exception as exc:  # noqa: BLE001 - the point is to turn any failure into one line
        if debug:
            raise
        line = report(exc)
        if _launch_env("WORLD_SIZE", 1) > 1:
            from ..runtime.ranks import peer_exited

            _exit_rank(wait=line is None or peer_exited(exc))
        sys.exit(1)


def interrupted() -> None:
    """Ctrl-C: end the line being printed, say so in one line (rank 0), exit 130 as shells do."""
    from ..runtime.group import is_main_process

    if is_main_process():
        print(flush=True)
        print("interrupted", file=sys.stderr, flush=True)
    sys.exit(130)


def _exit_rank(wait: bool) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if wait:
        # This rank printed nothing (rank 0 reports the same user error for all) or only the echo
        # of a peer that went away. torchrun stops every rank once the first one exits and names
        # that one as the root cause, so let the rank that speaks exit first: rank 0 may still be
        # joining the process group when this rank fails, and must live to print the error.
        time.sleep(EXIT_GRACE_S)
    # Skip interpreter teardown: joining collective threads that wait on a dead peer could
    # hang this rank while the launcher waits for it.
    os._exit(1)


def _launch_env(name: str, default: int) -> int:
    # Lenient: this runs while reporting an error, and a malformed RANK must not hide it.
    return env_int(name, default, strict=False)


def error_line(exc: BaseException) -> Optional[str]:
    """The `error:` line this rank prints for `exc`, or None when another rank speaks for it.

    User mistakes are the same on every rank: rank 0 reports them (and the first rank of each
    other node, whose log is separate). Anything else (a crash, out of memory) may be this
    rank's alone, so the rank that hit it reports it, naming itself. A lost peer is only the
    echo of another rank's failure: the first rank of each node mentions it.
    """
    rank, local_rank, world = _launch_env("RANK", 0), _launch_env("LOCAL_RANK", 0), _launch_env("WORLD_SIZE", 1)
    if world <= 1:
        return f"error: {_one_line(exc)}"
    from ..runtime.ranks import REPORT_ON_ANY_RANK, peer_failure

    if getattr(exc, REPORT_ON_ANY_RANK, False) and rank != 0:
        return f"error: rank {rank}: {_one_line(exc)}"  # its peers could not be told
    peer = peer_failure(exc)
    if peer is not None:
        return f"error: rank {rank}: {peer}" if local_rank == 0 else None
    if _user_error(exc):
        if rank == 0:
            return f"error: {_one_line(exc)}"
        return f"error: rank {rank}: {_one_line(exc)}" if local_rank == 0 else None
    return f"error: rank {rank}: {_one_line(exc)}"
