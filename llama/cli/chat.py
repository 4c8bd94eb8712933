"""Interactive chat: `python -m llama.chat [--ckpt_dir DIR --tokenizer_path FILE] [--system TEXT]`.

Reads one user turn per line from stdin (a terminal or a pipe) and streams each answer, generated
by the engine (llama.decoding.engine), whose prompt cache keeps the conversation's keys and values:
a turn computes only its new tokens. The dialog is kept within max_seq_len by dropping the oldest
exchanges, with a notice. Commands: /reset forgets the conversation, /exit quits; so does end of
input (Ctrl-D). Ctrl-C during an answer cuts it short (the part shown is kept); at the prompt it
quits. On a terminal, arrow keys edit the line and recall earlier turns (where Python has
readline). Without --ckpt_dir/--tokenizer_path it talks with the bundled demo model.
"""

import logging
import signal
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

from .. import demo
from ..chat_format import SPECIAL_TAGS, Dialog, Message, encode_dialog
from ..errors import ConfigError
from .flags import Flag
from .frontend import FLAGS, build_generator, stop_strings
from .run import run

if TYPE_CHECKING:  # torch and the engine are imported by main, so that --help renders without them
    from .chat_turn import Responder

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
        """Add a user turn; -> the dialog to answer. Raises ConfigError (and forgets the turn) if it
        holds a Llama 2 tag, which the library refuses, or if it alone cannot fit."""
        tags = [tag for tag in SPECIAL_TAGS if tag in text]
        if tags:
            raise ConfigError(
                f"this message contains {', '.join(tags)}, which Llama 2 chat models reserve for "
                "their prompt format; rephrase it without them"
            )
        self.messages.append({"role": "user", "content": text})
        dropped = 0
        while self._n_tokens() > self.prompt_budget and len(self.messages) > 1:
            del self.messages[:2]  # the oldest user turn and its answer
            dropped += 1
        if dropped:
            logger.info(
                "(dropped the %d oldest exchange(s) to stay within %d prompt tokens)", dropped, self.prompt_budget
            )
        n = self._n_tokens()
        if n > self.prompt_budget:
            self.messages.pop()
            raise ConfigError(
                f"this message takes {n} tokens with the chat template, more than the {self.prompt_budget} that fit "
                "(max_seq_len - max_gen_len); shorten it, or start with a larger --max_seq_len or smaller --max_gen_len"
            )
        return self.dialog()

    def answer(self, text: str) -> None:
        """Keep the model's answer, without Llama 2's tags.

        Models do write "[/INST]" and the like into answers. Meta's reference refuses any dialog
        that contains a tag ("special tags are not allowed as part of the prompt"), and so does
        this library, so one such answer kept verbatim would make every later turn fail. The
        user saw the answer as written; the history keeps it with the tags removed.
        """
        self.messages.append({"role": "assistant", "content": strip_special_tags(text)})

    def dialog(self) -> Dialog:
        system: List[Message] = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def _n_tokens(self) -> int:
        return len(encode_dialog(self.tokenizer, self.dialog()))


def strip_special_tags(text: str) -> str:
    """`text` without [INST], [/INST], <<SYS>>, <</SYS>> (removing one may join the text around it into another)."""
    while any(tag in text for tag in SPECIAL_TAGS):
        for tag in SPECIAL_TAGS:
            text = text.replace(tag, "")
    return text


def enable_line_editing() -> bool:
    """Let input() edit the line with the arrow keys and recall earlier turns with up/down.

    Importing the standard library's readline is all it takes; it is missing on Windows (and
    some minimal builds), where input() stays plain. -> whether line editing is on.
    """
    try:
        import readline  # noqa: F401 - imported for its effect on input()
    except ImportError:
        return False
    return True


def read_turn(prompt: str) -> Optional[str]:
    """The next line from stdin; None at end of input."""
    try:
        return input(prompt)
    except EOFError:
        return None


def chat_loop(respond: "Responder", conversation: Conversation) -> None:
    """Read turns until /exit or the end of input (Ctrl-C at the prompt: KeyboardInterrupt)."""
    interactive = sys.stdin.isatty()
    if interactive:
        enable_line_editing()
    while True:
        line = read_turn("User: " if interactive else "")
        if line is None or line.strip() == "/exit":
            return
        text = line.strip()
        if not text:
            continue
        if not interactive:
            print(f"User: {text}", flush=True)  # piped turns: the transcript shows both sides
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
        conversation.answer(respond(dialog).text)


CHAT_FLAGS = {
    **FLAGS,
    "system": Flag("a system prompt that opens the conversation; it stays when old turns are dropped", "TEXT"),
    "max_seq_len": replace(FLAGS["max_seq_len"], default=f"{demo.MAX_SEQ_LEN} for the demo model, else 2048"),
    "max_gen_len": replace(
        FLAGS["max_gen_len"],
        help="most tokens for each answer: the room kept free in max_seq_len",
        default="half of max_seq_len",
    ),
    "seed": Flag("random seed for sampling: the same seed and turns give the same answers", "N"),
    "repetition_penalty": replace(
        FLAGS["repetition_penalty"], help="> 1 makes tokens already in the conversation less likely (1: off)"
    ),
    "verbose": Flag("after each answer, say on stderr how many prompt tokens came from the cache and the rates"),
}


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
    quantize: Optional[str] = None,
    kv_cache_dtype: Optional[str] = None,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    stop: Union[None, str, Sequence[str]] = None,
    verbose: bool = False,
):
    """max_seq_len defaults to 256 for the demo model (its training context), else 2048;
    max_gen_len (the room kept for each answer) to half of it."""
    from ..decoding.engine import Engine
    from ..decoding.sampler import SamplingParams
    from ..runtime.group import is_main_process
    from .chat_turn import Responder

    using_demo = ckpt_dir is None and tokenizer_path is None
    if max_seq_len is None:
        max_seq_len = demo.MAX_SEQ_LEN if using_demo else 2048
    if max_gen_len is None:
        max_gen_len = max_seq_len // 2
    sampling = SamplingParams(temperature, top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
    sampling.check()  # before the load, not after it
    stops = stop_strings(stop)
    generator = build_generator(
        ckpt_dir,
        tokenizer_path,
        temperature,
        top_p,
        max_gen_len,
        max_seq_len=max_seq_len,
        max_batch_size=1,
        device=device,
        dtype=dtype,
        seed=seed,
        quantize=quantize,
        kv_cache_dtype=kv_cache_dtype,
    )
    if not is_main_process():
        # Rank 0 reads the turns and schedules; this rank repeats its steps until it closes. A
        # Ctrl-C reaches every rank of the terminal's process group: rank 0 alone acts on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        Engine.follow(generator)
        return
    conversation = Conversation(generator.tokenizer, max_seq_len, max_gen_len, None if system is None else str(system))
    engine = Engine(generator, max_queue=1)
    respond = Responder(engine, generator.tokenizer, sampling, max_gen_len, stops, verbose=bool(verbose))
    logger.info("chat ready (%s); %s", "demo model" if using_demo else ckpt_dir, COMMANDS)
    try:
        chat_loop(respond, conversation)
    except KeyboardInterrupt:
        print(flush=True)
    finally:
        engine.close(drain=False)


def cli() -> None:
    """`python -m llama.chat`."""
    run(main, CHAT_FLAGS, prog="python -m llama.chat")


__all__ = ["CHAT_FLAGS", "Conversation", "chat_loop", "cli", "main", "stop_strings", "strip_special_tags"]
