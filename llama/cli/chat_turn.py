"""One answer of `python -m llama.chat`, on the engine (llama.decoding.engine): the dialog's tokens
submitted as a request, the answer streamed to stdout, Ctrl-C cutting it short (what was shown is
kept), and with --verbose the prompt and generation rates on stderr.

The engine keeps the keys and values of the conversation so far in its slot, so each turn computes
only the tokens that are new since the last answer (the prompt cache), not the whole dialog.
"""

import logging
import time
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence

from ..chat_format import Dialog, encode_dialog
from ..decoding.requests import Completion, Request
from ..decoding.sampler import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class Answer:
    text: str  # what the user saw
    cut: bool  # stopped by Ctrl-C
    completion: Completion
    first_token_s: Optional[float]  # from submitting to the first token (the prompt's cost)
    total_s: float


class Responder:
    """Answers dialogs through `engine`, one at a time, with the chat's sampling settings.

    Every turn draws from its own generator, seeded from `seed` and the turn's number, so the same
    seed and turns give the same answers.
    """

    def __init__(
        self,
        engine,
        tokenizer,
        sampling: SamplingParams,
        max_gen_len: int,
        stop: Sequence[str] = (),
        verbose: bool = False,
    ):
        self.engine, self.tokenizer, self.sampling = engine, tokenizer, sampling
        self.max_gen_len, self.stop, self.verbose = max_gen_len, tuple(stop), verbose
        self.turns = 0

    def request(self, dialog: Dialog) -> Request:
        seed = None if self.sampling.seed is None else self.sampling.seed + self.turns
        sampling = replace(self.sampling, seed=seed)
        return Request(encode_dialog(self.tokenizer, dialog), self.max_gen_len, sampling, stop_strings=self.stop)

    def __call__(self, dialog: Dialog) -> Answer:
        """Stream the answer to `dialog` to stdout; -> what was shown. Raises the error of a failed step."""
        request = self.request(dialog)
        self.turns += 1
        started = time.perf_counter()
        handle = self.engine.submit(request)
        print("Assistant: ", end="", flush=True)
        pieces: List[str] = []
        first: Optional[float] = None
        cut = False
        try:
            for event in handle:
                if first is None and event.token is not None:
                    first = time.perf_counter()
                pieces.append(event.text)
                print(event.text, end="", flush=True)
        except KeyboardInterrupt:
            handle.cancel()  # the engine ends it within a step and keeps what was computed
            cut = True
        completion = handle.result()
        print(flush=True)
        answer = Answer("".join(pieces), cut, completion, None if first is None else first - started,
                        time.perf_counter() - started)  # fmt: skip
        if cut:
            logger.info("(answer cut short by Ctrl-C; Ctrl-C at the prompt, /exit or Ctrl-D quits)")
        if completion.error is not None:
            raise completion.error
        if self.verbose:
            logger.info(rates_line(answer))
        return answer


def rates_line(answer: Answer) -> str:
    """`--verbose`'s line: the prompt (cached and computed tokens, time to the first token) and the
    answer's generation rate, apart, as llama.cpp's timings and `ollama run --verbose` give them."""
    c = answer.completion
    computed = c.prompt_tokens - c.cached_tokens
    n = len(c.tokens)
    prompt = f"prompt {c.prompt_tokens} tokens ({c.cached_tokens} from the cache, {computed} computed)"
    if answer.first_token_s is None:
        return f"({prompt}; no answer tokens, {answer.total_s:.2f} s)"
    rate = computed / max(answer.first_token_s, 1e-9)
    prompt += f", first token after {answer.first_token_s:.3f} s ({rate:.1f} tokens/s)"
    decode_s = answer.total_s - answer.first_token_s
    if n > 1 and decode_s > 0:
        gen = f"answer {n} tokens, {(n - 1) / decode_s:.1f} tokens/s after the first"
    else:
        gen = f"answer {n} token(s)"
    return f"({prompt}; {gen})"
