"""The ModelArgs a build runs with: the checkpoint's params.json and the run's sizes, with the
tokenizer's vocabulary (as in the reference); a warning when max_seq_len passes the context the
model family was trained for."""

import logging

from ..errors import ConfigError
from ..model import ModelArgs
from ..runtime.group import is_main_process
from ..tokenizer import Tokenizer
from .loading import Checkpoint

logger = logging.getLogger(__name__)

# The context each family was trained for; longer ones still run, but quality degrades.
LLAMA2_CONTEXT, LLAMA3_CONTEXT, LLAMA31_CONTEXT = 4096, 8192, 131072


def model_args(ckpt: Checkpoint, tokenizer: Tokenizer, max_seq_len: int, max_batch_size: int) -> ModelArgs:
    """params.json + the run's sizes; the vocabulary is the tokenizer's, as in the reference."""
    declared = ckpt.params.get("vocab_size", -1)
    if declared > 0 and declared != tokenizer.n_words:
        raise ConfigError(
            f"params.json in {str(ckpt.path)!r} says vocab_size={declared}, but the tokenizer has "
            f"{tokenizer.n_words} words; use the tokenizer.model that came with these weights"
        )
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **ckpt.params)
    args.vocab_size = tokenizer.n_words
    trained = trained_context(args, tokenizer)
    if max_seq_len > trained and is_main_process():
        logger.warning(
            "max_seq_len=%d is beyond the %d tokens this model was trained for; text past that point degrades",
            max_seq_len,
            trained,
        )
    return args


def trained_context(args: ModelArgs, tokenizer: Tokenizer) -> int:
    if args.use_scaled_rope:
        return LLAMA31_CONTEXT
    if tokenizer.kind == "tiktoken":
        return LLAMA3_CONTEXT
    return LLAMA2_CONTEXT if args.rope_theta == 10000.0 else LLAMA31_CONTEXT  # Code Llama: long contexts
