"""What several tests share: where the repository is, the environment for a subprocess that runs
this checkout, the reference's prompts, the held-out text, and the check that a refused write left
nothing behind."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Prose no training text contains (tests/data/), for the demo model's held-out score.
HELDOUT = REPO / "tests" / "data" / "heldout_programming.txt"

# Set by torchrun (or left over from one): a subprocess must start as a plain, single process.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")

# The first two prompts of Meta's example_text_completion.py (meta-llama/llama).
PROMPTS = ["I believe the meaning of life is", "Simply put, the theory of relativity states that "]


def subprocess_env(**extra: str) -> dict:
    """This environment without launcher, LLAMA_* or TORCHELASTIC_* settings, importing this checkout
    on one OpenMP thread (the test models are tiny), plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("LLAMA_", "TORCHELASTIC_"))
    }
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def assert_nothing_written(dst: Path):
    assert not dst.exists()
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.")]
