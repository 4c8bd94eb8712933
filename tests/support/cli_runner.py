"""Run command-line cases as separate processes without paying torch's import for each one.

Importing torch takes seconds on a loaded machine, more than most error cases take to run. This
script imports the package once, then reads one JSON case per line on stdin and forks a child per
case. The child points its stdout/stderr at files and runs the script as `__main__`, as
`python script args...` would: its own exit status, uncaught tracebacks printed by
sys.excepthook, atexit handlers run. It then leaves with os._exit, skipping only the interpreter's
module teardown, which prints nothing but costs a second or two in a forked child (it touches
every page shared with the parent). The parent answers one JSON line, {"rc": exit status}; it
never runs torch code, so each child starts as clean as a fresh interpreter. Linux only (fork
after importing torch is not safe on macOS); tests/e2e/test_cli_errors.py uses plain subprocesses elsewhere.
"""

import atexit
import json
import os
import runpy
import signal
import sys
import time

import fire  # noqa: F401 - imported here so that children do not pay for it
import torch  # noqa: F401 - nor for torch (llama.cli.frontend imports it lazily, when a run starts)

import llama.cli.frontend  # noqa: F401
import llama.generation  # noqa: F401 - the generator, the model and the kernels' modules


def _become(case: dict) -> None:
    """Turn this forked child into `python script args...` with the case's files, cwd and env."""
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(case["env"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, case["stdout"], os.O_WRONLY | os.O_CREAT),
        (2, case["stderr"], os.O_WRONLY | os.O_CREAT),
    ):
        os.dup2(os.open(path, flags), fd)
    sys.argv = [case["script"], *case["args"]]
    sys.path[0] = os.path.dirname(case["script"])


def _run_as_main(script: str) -> int:
    """The script's exit status, with the interpreter's handling of SystemExit and uncaught errors."""
    try:
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - exactly what the interpreter would do at top level
        sys.excepthook(*sys.exc_info())
        return 1


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.01)


def main() -> None:
    for line in iter(sys.stdin.readline, ""):
        case = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become(case)
            code = _run_as_main(case["script"])
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"rc": _wait(pid, case["timeout"])}), flush=True)


if __name__ == "__main__":
    main()
