"""The bundled demo model: a small Llama 2 trained on Python's own documentation.

Its files (params.json, consolidated.00.pth, tokenizer.model) sit next to this module and are
made by scripts/train_demo.py; TRAINING.md records the run. `Llama.build_demo()` loads it, and
the example scripts and `python -m llama.chat` fall back to it when no checkpoint is named.
"""

import logging
from pathlib import Path
from typing import Optional, Tuple

from ..errors import ConfigError

logger = logging.getLogger(__name__)

CKPT_DIR = Path(__file__).resolve().parent
TOKENIZER_PATH = CKPT_DIR / "tokenizer.model"
MAX_SEQ_LEN = 256  # the context it was trained on; longer contexts work but degrade
MAX_BATCH_SIZE = 4


def resolve(ckpt_dir: Optional[str], tokenizer_path: Optional[str]) -> Tuple[str, Optional[str]]:
    """The checkpoint the user named, or the demo when both are omitted (said in one log line).

    A checkpoint without tokenizer_path is fine: Llama.build looks for the tokenizer.model that
    sits with the weights. A tokenizer without a checkpoint is not.

    No side effects beyond that line: the command-line front ends choose the demo's thread
    count (llama.cli.frontend.use_one_thread_for_the_demo).
    """
    if ckpt_dir is None and tokenizer_path is None:
        logger.info("no --ckpt_dir/--tokenizer_path given: using the bundled demo model in %s", CKPT_DIR)
        return str(CKPT_DIR), str(TOKENIZER_PATH)
    if ckpt_dir is None:
        raise ConfigError(
            "--tokenizer_path was given without --ckpt_dir; pass the checkpoint folder too (Meta's or a Hugging "
            "Face one), or neither to run the bundled demo model"
        )
    return ckpt_dir, tokenizer_path
