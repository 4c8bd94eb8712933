"""llama.cli.run's error line: which rank prints which error, and in what words (the launches
themselves: tests/e2e/test_distributed.py)."""

import pytest

from llama.cli.run import error_line
from llama.errors import CheckpointError, ConfigError

PEER_LOST = RuntimeError(
    "[../third_party/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5. "
    "This is typically caused by a remote worker crashing."
)
LOST_LINE = (
    "lost contact with another rank (Connection closed by peer [127.0.0.1]:5); the rank that failed "
    "prints its own error, and torchrun's failure report names it (Root Cause)"
)

PEER_SILENT = RuntimeError(
    "[../gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms for recv operation to complete"
)
SILENT_LINE = (
    "another rank stopped answering (Timed out waiting 30000ms for recv operation to complete): it hung, "
    "or its machine or network went away; if it is only slow, raise LLAMA_COLLECTIVE_TIMEOUT or "
    "LLAMA_LOAD_TIMEOUT (seconds)"
)


@pytest.mark.parametrize(
    "rank, local_rank, world, exc, line",
    [
        (0, 0, 1, ConfigError("top_p must be in (0, 1]"), "error: top_p must be in (0, 1]"),
        (0, 0, 4, ConfigError("top_p must be in (0, 1]"), "error: top_p must be in (0, 1]"),
        (1, 1, 4, ConfigError("top_p must be in (0, 1]"), None),  # rank 0 says it for everyone
        (2, 0, 4, ConfigError("top_p must be in (0, 1]"), "error: rank 2: top_p must be in (0, 1]"),  # node 2's log
        (3, 1, 4, MemoryError("cannot allocate 4 GiB"), "error: rank 3: MemoryError: cannot allocate 4 GiB"),
        (1, 1, 2, CheckpointError("shard 01 is truncated"), None),
        (0, 0, 2, PEER_LOST, f"error: rank 0: {LOST_LINE}"),
        (1, 1, 2, PEER_LOST, None),
        (0, 0, 1, PEER_LOST, f"error: RuntimeError: {PEER_LOST}"),
        (0, 0, 2, PEER_SILENT, f"error: rank 0: {SILENT_LINE}"),
    ],
    ids=[
        "single",
        "rank0-user",
        "rank1-user",
        "node-leader-user",
        "rank-local-crash",
        "rank1-checkpoint",
        "rank0-peer-lost",
        "rank1-peer-lost",
        "single-runtime",
        "rank0-peer-silent",
    ],
)
def test_which_rank_prints_which_error(monkeypatch, rank, local_rank, world, exc, line):
    for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world)):
        monkeypatch.setenv(name, str(value))
    assert error_line(exc) == line


def test_ctrl_c_ends_the_line_says_interrupted_and_exits_130(monkeypatch, capsys):
    from llama.cli import run as run_module

    def main():
        print("> partial answer", end="")
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["example_text_completion.py"])
    with pytest.raises(SystemExit) as stopped:
        run_module.run(main)
    assert stopped.value.code == 130
    out, err = capsys.readouterr()
    assert out == "> partial answer\n" and err == "interrupted\n"
