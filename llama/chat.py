"""Interactive chat: `python -m llama.chat [--ckpt_dir DIR --tokenizer_path FILE] [--system TEXT]`.

Reads one user turn per line from stdin (a terminal or a pipe) and streams each answer. The
dialog is kept within max_seq_len by dropping the oldest exchanges, with a notice. Commands:
/reset forgets the conversation, /exit quits; so do end of input (Ctrl-D) and Ctrl-C.
Without --ckpt_dir/--tokenizer_path it talks with the bundled demo model.
"""
import logging
import sys
from typing import List, Optional

import torch.distributed as dist

from . import demo
from .chat_format import Dialog, Message, encode_dialog
from .cli import run
from .errors import ConfigError
from .generation import Llama
from .streaming import stream_chat_completion

logger = logging.getLogger(__name__)

COMMANDS = "/reset forgets the conversation, /exit quits"


class Conversation:
    """The dialog so far, trimmed (oldest exchange first) so that prompt + answer fit in max_seq_len."""

    def __init__(self, tokenizer, max_seq_len: int, max_gen_len: int, system: Optional[str] = None):
        self.tokenizer, self.system = tokenizer, system
        self.prompt_budget = max_seq_len - max_gen_len  # tokens the prompt may use; the rest is for the answer
        self.messages: List[Message] = []

    def reset(self) -> None:
        self.messages = []

    def ask(self, text: str) -> Dialog:
        """Add a user turn; -> the dialog to answer. Raises ConfigError if the turn alone cannot fit."""
        self.messages.append({"role": "user", "content": text})
        dropped = 0
        while self._n_tokens() > self.prompt_budget and len(self.messages) > 1:
            del self.messages[:2]  # the oldest user turn and its answer
            dropped += 1
        if dropped:
            logger.info("(dropped the %d oldest exchange(s) to stay within %d prompt tokens)", dropped, self.prompt_budget)
        n = self._n_tokens()
        if n > self.prompt_budget:
            self.messages.pop()
            raise ConfigError(
                f"this message takes {n} tokens with the chat template, more than the {self.prompt_budget} that fit "
                "(max_seq_len - max_gen_len); shorten it, or start with a larger --max_seq_len or smaller --max_gen_len"
            )
        return self.dialog()

    def answer(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def dialog(self) -> Dialog:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def _n_tokens(self) -> int:
        return len(encode_dialog(self.tokenizer, self.dialog()))


def read_turn(prompt: str) -> Optional[str]:
    """The next line from rank 0's stdin, shared with every rank; None at end of input."""
    line = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            line = input(prompt)
        except EOFError:
            line = None
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [line]
        dist.broadcast_object_list(box, src=0)
        line = box[0]
    return line


def respond(generator: Llama, dialog: Dialog, temperature: float, top_p: float, max_gen_len: int) -> str:
    """Stream the answer to stdout (rank 0) as it is generated; -> the whole answer."""
    pieces = []
    if generator.is_main:
        print("Assistant: ", end="", flush=True)
    for event in stream_chat_completion(generator, [dialog], temperature, top_p, max_gen_len):
        pieces.append(event.text)
        if generator.is_main:
            print(event.text, end="", flush=True)
    if generator.is_main:
        print(flush=True)
    return "".join(pieces)


def chat_loop(generator: Llama, conversation: Conversation, temperature: float, top_p: float, max_gen_len: int):
    prompt = "User: " if sys.stdin.isatty() else ""
    while True:
        line = read_turn(prompt)
        if line is None or line.strip() == "/exit":
            return
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            conversation.reset()
            logger.info("(conversation reset)")
            continue
        if text.startswith("/") and " " not in text:
            logger.info("unknown command %r; %s", text, COMMANDS)
            continue
        try:
            dialog = conversation.ask(text)
        except ConfigError as exc:
            logger.error("error: %s", exc)
            continue
        conversation.answer(respond(generator, dialog, temperature, top_p, max_gen_len))


def main(
    ckpt_dir: Optional[str] = None,
    tokenizer_path: Optional[str] = None,
    system: Optional[str] = None,
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_seq_len: Optional[int] = None,
    max_gen_len: Optional[int] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    seed: int = 1,
):
    """max_seq_len defaults to 256 for the demo model (its training context), else 2048;
    max_gen_len (the room kept for each answer) to half of it."""
    using_demo = ckpt_dir is None and tokenizer_path is None
    ckpt_dir, tokenizer_path = demo.resolve(ckpt_dir, tokenizer_path)
    if max_seq_len is None:
        max_seq_len = demo.MAX_SEQ_LEN if using_demo else 2048
    if max_gen_len is None:
        max_gen_len = max_seq_len // 2
    if isinstance(max_gen_len, bool) or not isinstance(max_gen_len, int) or not 0 < max_gen_len < max_seq_len:
        raise ConfigError(f"max_gen_len must be an integer in [1, max_seq_len={max_seq_len}), got {max_gen_len!r}")
    generator = Llama.build(ckpt_dir, tokenizer_path, max_seq_len, 1, device=device, dtype=dtype, seed=seed)
    conversation = Conversation(generator.tokenizer, max_seq_len, max_gen_len, None if system is None else str(system))
    logger.info("chat ready (%s); %s", "demo model" if using_demo else ckpt_dir, COMMANDS)
    try:
        chat_loop(generator, conversation, temperature, top_p, max_gen_len)
    except KeyboardInterrupt:
        if generator.is_main:
            print(flush=True)


if __name__ == "__main__":
    run(main)
