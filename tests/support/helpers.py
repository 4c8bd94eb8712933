"""What several tests share: where the repository is, the environment for a subprocess that runs
this checkout, and the reference's prompts."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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
