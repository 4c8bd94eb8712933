"""Both example scripts on the bundled demo model, run as a user runs them: no checkpoint given."""

import os
import re
import subprocess
import sys

from support.helpers import REPO

# The closing line: the prompt (to the first token) and the generation after it, apart.
SUMMARY = (
    r"generated \d+ tokens: the first after \d+\.\d\d s \(prompt \d+ tokens, [\d.]+ tokens/s\), "
    r"the rest in \d+\.\d\d s \([\d.]+ tokens/s\)"
)


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "using the bundled demo model" in done.stderr
    assert re.search(SUMMARY, done.stderr)
    return done


def without_load_time(stdout: str) -> str:
    return re.sub(r"^Loaded in [\d.]+ seconds\n", "", stdout, flags=re.M)


def test_text_example_runs_on_the_demo_and_streams_the_same_text():
    printed = run_example("example_text_completion.py", "--temperature", "0").stdout
    streamed = run_example("example_text_completion.py", "--temperature", "0", "--stream").stdout
    assert printed.count("==================================") == 4
    assert without_load_time(streamed) == without_load_time(printed)


def test_chat_example_runs_on_the_demo():
    printed = run_example("example_chat_completion.py", "--stream").stdout
    assert printed.count("> Assistant: ") == 6
    assert "> Assistant: Error: special tags are not allowed as part of the prompt." in printed
