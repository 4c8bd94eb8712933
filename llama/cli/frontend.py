"""What the example scripts and `python -m llama.chat` share: their flags, building the generator (or
the bundled demo model), the thread count, printing results as the reference does (or streamed),
and the closing summary line."""

import logging
import os
import time
from typing import Any, Callable, Iterator, List, Optional, Union, cast

import torch

from .. import demo
from ..chat_format import Dialog
from ..decoding.native_step import NativeDecode
from ..generation import Llama
from ..kernels.formats import METHODS
from ..runtime.backend import DEVICE_CHOICES
from ..runtime.group import is_main_process
from ..streaming import StreamEvent, in_prompt_order, stream_chat_completion, stream_text_completion
from ..validation import check_sampling
from .flags import Flag

logger = logging.getLogger(__name__)

SEPARATOR = "\n==================================\n"
NEEDS_CKPT = "pass the checkpoint folder too (Meta's or a Hugging Face one), or neither to run the bundled demo model"

# --help's line for each flag the generator commands take (llama.chat adds its own).
FLAGS = {
    "ckpt_dir": Flag(
        "checkpoint folder: Meta's (params.json, consolidated.*.pth) or Hugging Face's (config.json, *.safetensors)",
        "DIR",
        example="llama-2-7b/",
        default="the bundled demo model",
    ),
    "tokenizer_path": Flag(
        "the checkpoint's tokenizer.model (SentencePiece or Llama 3 tiktoken) or Hugging Face tokenizer.json",
        "FILE",
        example="tokenizer.model",
        default="tokenizer.model in DIR, else DIR/original/tokenizer.model, else DIR/tokenizer.json",
        needs=("ckpt_dir", NEEDS_CKPT),
    ),
    "temperature": Flag("sampling temperature; 0 always picks the most likely token (greedy)", "T"),
    "top_p": Flag("sample only from the most likely tokens whose probabilities add up to P, in (0, 1]", "P"),
    "max_seq_len": Flag("longest prompt plus answer, in tokens; sets the size of the KV cache", "N"),
    "max_gen_len": Flag("most tokens to generate for each prompt", "N"),
    "max_batch_size": Flag("most prompts generated together; more run in later batches", "N"),
    "device": Flag(
        "where to run",
        "DEVICE",
        choices=DEVICE_CHOICES,
        default="cuda:LOCAL_RANK if CUDA is available, else mps, else cpu; env LLAMA_DEVICE",
    ),
    "dtype": Flag(
        "weight and activation dtype",
        "DTYPE",
        choices=("float32", "bfloat16", "float16"),
        default="bfloat16 on CUDA, or float16 where it lacks bfloat16; float16 on mps; float32 on cpu; env LLAMA_DTYPE",
    ),
    "stream": Flag("print each answer as it is generated, token by token"),
    "compile": Flag(
        "compile the one-token decode step with torch.compile: faster on CUDA (on x86 CPUs a "
        "faster native step runs instead); the first generation pays the compilation"
    ),
    "quantize": Flag("weight-only quantization of the linear layers", "METHOD", choices=METHODS),
}


def use_one_thread_for_the_demo() -> None:
    """Run the bundled demo model on one CPU thread unless OMP_NUM_THREADS says otherwise.

    A process-wide setting, so it is made here, where the user's command starts, and said once:
    the demo's matrices are too small to gain from a second thread, and where the cores are busy
    with other work a second OpenMP thread makes every matmul wait for a descheduled peer
    (BENCHMARKS.md, "Figures behind choices in the code").
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(1)
    logger.info("the demo model runs on 1 CPU thread (set OMP_NUM_THREADS to choose another count)")


def build_generator(
    ckpt_dir: Optional[str],
    tokenizer_path: Optional[str],
    temperature: float,
    top_p: float,
    max_gen_len: Optional[int],
    **build_kwargs,
) -> Llama:
    """What a command does before generating: check the sampling flags first (not after a slow
    load), fall back to the bundled demo model when neither path is given, Llama.build(**build_kwargs)."""
    check_sampling(temperature, top_p, max_gen_len)
    if ckpt_dir is None and tokenizer_path is None:
        use_one_thread_for_the_demo()
    ckpt_dir, tokenizer_path = demo.resolve(ckpt_dir, tokenizer_path)
    generator = Llama.build(ckpt_dir=ckpt_dir, tokenizer_path=tokenizer_path, **build_kwargs)
    if build_kwargs.get("compile") and generator.device.type == "cpu":
        if isinstance(generator.decode_step, NativeDecode):
            logger.info(
                "--compile is not used: this model's one-token steps run natively (llama.decoding.native_step), "
                "faster than a compiled step"
            )
        else:
            logger.info(
                "--compile on the CPU: the first generation compiles the decode step (seconds); it pays off "
                "for small models, not for 7B-sized ones (see BENCHMARKS.md)"
            )
    return generator


def log_summary(n_tokens: int, gen_s: float, compiled: bool = False) -> None:
    """The closing line: generation only (Llama.build's `Loaded in X seconds` line gives the load)."""
    note = ", including the decode step's compilation" if compiled else ""
    logger.info("generated %d tokens in %.2f s (%.1f tokens/s%s)", n_tokens, gen_s, n_tokens / max(gen_s, 1e-9), note)


def print_dialog(dialog: Dialog) -> None:
    for msg in dialog:
        print(f"{msg['role'].capitalize()}: {msg['content']}\n")


def print_streamed(events: Iterator[StreamEvent], print_prompt: Callable[[int], None], answer_prefix: str) -> int:
    """Print each answer as it is generated, one prompt after another; -> tokens generated."""
    n_tokens, started = 0, set()
    for event in in_prompt_order(events):
        n_tokens += event.token is not None
        if not is_main_process():
            continue
        if event.index not in started:
            started.add(event.index)
            print_prompt(event.index)
            print(answer_prefix, end="")
        print(event.text, end="", flush=True)
        if event.done:
            print()
            print(SEPARATOR)
    return n_tokens


def print_answers(generator: Llama, answers: List[str], print_prompt: Callable[[int], None], answer_prefix: str) -> int:
    """Print every answer after its prompt; -> tokens generated."""
    if is_main_process():
        for i, answer in enumerate(answers):
            print_prompt(i)
            print(f"{answer_prefix}{answer}")
            print(SEPARATOR)
    return sum([len(generator.tokenizer.encode(answer, bos=False, eos=False)) for answer in answers])


def complete(
    generator: Llama,
    inputs: Union[List[str], List[Dialog]],
    temperature: float,
    top_p: float,
    max_gen_len: Optional[int],
    *,
    chat: bool,
    stream: bool = False,
    compiled: bool = False,
) -> None:
    """What Meta's example scripts print (on rank 0) for `inputs`, prompts or (chat=True) dialogs,
    in their layout, streamed or at the end; then the summary line."""
    started = time.perf_counter()
    prefix = "> Assistant: " if chat else "> "
    sampling: Any = dict(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p)
    if chat:
        dialogs = cast(List[Dialog], inputs)
        show: Callable[[int], None] = lambda i: print_dialog(dialogs[i])  # noqa: E731
        if stream:
            events = stream_chat_completion(generator, dialogs, temperature, top_p, max_gen_len)
            n_tokens = print_streamed(events, show, prefix)
        else:
            chats = generator.chat_completion(dialogs, **sampling)
            n_tokens = print_answers(generator, [r["generation"]["content"] for r in chats], show, prefix)
    else:
        prompts = cast(List[str], inputs)
        show = lambda i: print(prompts[i])  # noqa: E731
        if stream:
            events = stream_text_completion(generator, prompts, temperature, top_p, max_gen_len)
            n_tokens = print_streamed(events, show, prefix)
        else:
            texts = generator.text_completion(prompts, **sampling)
            n_tokens = print_answers(generator, [r["generation"] for r in texts], show, prefix)
    log_summary(
        n_tokens, time.perf_counter() - started, compiled and not isinstance(generator.decode_step, NativeDecode)
    )
