"""What every command-line entry point shares: one `error:` line instead of a traceback, rank 0 speaks."""
import inspect
import json
import logging
import os
import re
import sys
import time
from typing import Callable, List, Optional, Tuple

import fire

from . import demo
from .backend import peer_exited, peer_failure
from .errors import ConfigError, LlamaError
from .generation import Llama, check_sampling
from .ranks import REPORT_ON_ANY_RANK

logger = logging.getLogger(__name__)

DEBUG_ENV = "LLAMA_DEBUG"
# torchrun gives each worker a file to describe its failure in; its summary then shows our
# message instead of a pointer to its docs.
LAUNCHER_ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
PEER_EXIT_GRACE_S = 2.0


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def setup_logging() -> None:
    """INFO on rank 0, warnings only elsewhere (so one rank speaks for all)."""
    level = logging.INFO if is_main_rank() else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def _user_error(exc: BaseException) -> bool:
    return isinstance(exc, (LlamaError, ValueError, TypeError, FileNotFoundError, PermissionError))


def _is_flag(arg: str) -> bool:
    """fire's rule: a leading hyphen, unless it is a negative number."""
    return arg.startswith("--") or re.match(r"^-[a-zA-Z]", arg) is not None


def _flag_name(arg: str, names: List[str]) -> str:
    """The parameter `arg` sets, as fire resolves it; raise ConfigError if it sets none."""
    key = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if key in names:
        return key
    if key.startswith("no") and key[2:] in names:  # fire's --noflag for False
        return key[2:]
    shortcuts = [n for n in names if n[0] == key] if len(key) == 1 else []
    if len(shortcuts) == 1:
        return shortcuts[0]
    if shortcuts:
        raise ConfigError(f"ambiguous flag {arg!r}: it could be {', '.join('--' + n for n in shortcuts)}")
    prog = os.path.basename(sys.argv[0])
    raise ConfigError(f"unknown flag {arg!r}; {prog} accepts {', '.join('--' + n for n in names)}")


def check_args(main: Callable, argv: List[str]) -> None:
    """Refuse unknown flags, surplus arguments and missing required ones before `main` runs.

    fire would call `main` first (loading the model, generating) and only then complain about
    arguments it could not use.
    """
    params = inspect.signature(main).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        return
    names = list(params)
    named, positional, i = set(), [], 0
    while i < len(argv) and argv[i] != "--":  # after "--" come fire's own flags
        arg = argv[i]
        if arg in ("--help", "-h"):
            return  # fire shows the usage
        if _is_flag(arg):
            named.add(_flag_name(arg, names))
            takes_next = "=" not in arg and i + 1 < len(argv) and not _is_flag(argv[i + 1])
            i += 2 if takes_next else 1
            continue
        positional.append(arg)
        i += 1
    unnamed = [n for n in names if n not in named and params[n].kind != params[n].KEYWORD_ONLY]
    if len(positional) > len(unnamed):
        raise ConfigError(f"unexpected extra arguments {positional[len(unnamed):]}; pass options as --name value")
    missing = [n for n in unnamed[len(positional):] if params[n].default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"missing required arguments: {', '.join(missing)}; e.g. --{missing[0]} PATH")


def _one_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text or not _user_error(exc):
        text = f"{type(exc).__name__}: {text}".rstrip(": ")
    return text


def report(exc: BaseException) -> None:
    """Print this rank's `error:` line, if it is the one to speak, and hand it to the launcher."""
    line = error_line(exc)
    if line is None:
        return
    print(line, file=sys.stderr, flush=True)
    error_file = os.environ.get(LAUNCHER_ERROR_FILE)
    if error_file:
        message = line[len("error: "):]
        try:
            with open(error_file, "w") as f:  # the layout torch.distributed.elastic writes itself
                info = {"py_callstack": message, "timestamp": str(int(time.time()))}
                json.dump({"message": {"message": message, "extraInfo": info}}, f)
        except OSError:
            pass  # the error line above already said it


def run(main: Callable) -> None:
    """Run `main` through fire; user mistakes exit 1 with one `error: ...` line on stderr.

    Set LLAMA_DEBUG=1 (or pass --debug) to see the traceback instead.
    """
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0") or "--debug" in sys.argv
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    setup_logging()
    try:
        check_args(main, sys.argv[1:])
        fire.Fire(main)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the point is to turn any failure into one line
        if debug:
            raise
        report(exc)
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
        return f"error: {_one_line(exc)}"
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


def build_generator(ckpt_dir: Optional[str], tokenizer_path: Optional[str], temperature: float, top_p: float,
                    max_gen_len: Optional[int], **build_kwargs) -> Tuple[Llama, float]:
    """What a command does before generating -> (generator, seconds the load took).

    Checks the sampling flags first (not after a slow load), runs the bundled demo model when
    neither path is given, then Llama.build(**build_kwargs).
    """
    check_sampling(temperature, top_p, max_gen_len)
    ckpt_dir, tokenizer_path = demo.resolve(ckpt_dir, tokenizer_path)
    started = time.perf_counter()
    generator = Llama.build(ckpt_dir=ckpt_dir, tokenizer_path=tokenizer_path, **build_kwargs)
    return generator, time.perf_counter() - started


def log_summary(load_s: float, n_tokens: int, gen_s: float) -> None:
    logger.info("loaded in %.2f s; generated %d tokens in %.2f s (%.1f tokens/s)", load_s, n_tokens, gen_s,
                n_tokens / max(gen_s, 1e-9))
