"""What the example scripts and `python -m llama.chat` share: their flags, building the generator (or
the bundled demo model), the thread count, printing results as the reference does (or streamed),
and the closing summary line.

torch and the generator are imported where they are used, not here: `--help` renders the flags of
every command without them (well under a second).
"""

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, Union, cast

from .. import demo
from ..chat_format import Dialog
from ..errors import ConfigError
from ..runtime.choices import DEVICE_CHOICES, METHODS
from ..validation import check_sampling, whole_number
from .flags import Flag

if TYPE_CHECKING:
    from ..decoding.batches import Timings
    from ..generation import Llama
    from ..streaming import StreamEvent

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
    "kv_cache_dtype": Flag(
        "how the KV cache stores keys and values, whatever the weights (int8: a scale per position and head)",
        "DTYPE",
        choices=("float32", "bfloat16", "int8"),
        default="the model's dtype",
    ),
    "top_k": Flag("sample only from the K most likely tokens (0: off)", "K"),
    "repetition_penalty": Flag("> 1 makes tokens already in the prompt or answer less likely (1: off)", "R"),
    "stop": Flag('end an answer before this text (a string, or a list such as \'["A", "B"]\')', "TEXT"),
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
    import torch

    torch.set_num_threads(1)
    logger.info("the demo model runs on 1 CPU thread (set OMP_NUM_THREADS to choose another count)")


def build_generator(
    ckpt_dir: Optional[str],
    tokenizer_path: Optional[str],
    temperature: float,
    top_p: float,
    max_gen_len: Optional[int],
    **build_kwargs,
) -> "Llama":
    """What a command does before generating: check the sampling flags first (not after a slow
    load), fall back to the bundled demo model when neither path is given, Llama.build(**build_kwargs)."""
    from ..decoding.native_step import NativeDecode
    from ..generation import Llama

    check_sampling(temperature, top_p, max_gen_len)
    check_gen_len(max_gen_len, build_kwargs.get("max_seq_len"))
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


def check_gen_len(max_gen_len: Optional[int], max_seq_len: Optional[int]) -> None:
    """Every front end's rule for max_gen_len: below max_seq_len (room for a prompt), or a ConfigError
    naming both; an answer that a long prompt leaves less room is clipped with a note (note_clipped)."""
    if max_gen_len is not None and isinstance(max_seq_len, int) and max_seq_len > 0:  # else Llama.build says
        fix = f" (max_seq_len={max_seq_len} must leave room for the prompt)"
        whole_number("max_gen_len", max_gen_len, minimum=0, below=max_seq_len, fix=fix)


def note_clipped(prompt_lengths: List[int], max_gen_len: Optional[int], max_seq_len: int) -> None:
    """Say once on stderr when the longest prompt leaves fewer than max_gen_len tokens for answers (the
    reference's loop then stops at max_seq_len: total_len = min(max_seq_len, max_gen_len + longest))."""
    if max_gen_len is None or not prompt_lengths:
        return
    longest = max(prompt_lengths)
    room = max_seq_len - longest
    if room < max_gen_len:
        index = prompt_lengths.index(longest)
        logger.info(
            "note: max_gen_len=%d does not fit after prompt %d's %d tokens in max_seq_len=%d: answers stop at %d "
            "new tokens; raise --max_seq_len to let them run to %d",
            max_gen_len, index + 1, longest, max_seq_len, room, max_gen_len,
        )  # fmt: skip


def sampling_options(top_k: int, repetition_penalty: float, stop: Union[None, str, Sequence[str]]) -> dict:
    """--top_k, --repetition_penalty, --stop checked before the load; -> text_completion's keyword
    arguments for them (none when all are off: the reference's code path and draws)."""
    from ..decoding.sampler import SamplingParams

    SamplingParams(top_k=top_k, repetition_penalty=repetition_penalty).check()
    stops = stop_strings(stop)
    options: dict = {}
    if top_k:
        options["top_k"] = top_k
    if repetition_penalty != 1.0:
        options["repetition_penalty"] = repetition_penalty
    if stops:
        options["stop"] = stops
    return options


def stop_strings(stop: Union[None, str, Sequence[str]]) -> List[str]:
    """--stop as a list of non-empty strings; ConfigError naming anything else."""
    values = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in values):
        raise ConfigError(f"--stop takes a non-empty text or a list of them, got {stop!r}; e.g. --stop 'User:'")
    return values


def log_summary(timings: "Timings", compiled: bool = False) -> None:
    """The closing line, on stderr: the prompt (to the first token) and the generation after it, apart
    (Llama.build's `Loaded in X seconds` line gives the load)."""
    note = ", including the decode step's compilation" if compiled else ""
    t = timings
    logger.info(
        "generated %d tokens: the first after %.2f s (prompt %d tokens, %.1f tokens/s), the rest in %.2f s "
        "(%.1f tokens/s%s)",
        t.generated_tokens, t.prompt_s, t.prompt_tokens, t.prompt_rate, t.generation_s, t.generation_rate, note,
    )  # fmt: skip


def print_dialog(dialog: Dialog) -> None:
    for msg in dialog:
        print(f"{msg['role'].capitalize()}: {msg['content']}\n")


def print_streamed(events: Iterator["StreamEvent"], print_prompt: Callable[[int], None], answer_prefix: str) -> None:
    """Print each answer as it is generated, one prompt after another."""
    from ..runtime.group import is_main_process
    from ..streaming import in_prompt_order

    started = set()
    for event in in_prompt_order(events):
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


def print_answers(answers: List[str], print_prompt: Callable[[int], None], answer_prefix: str) -> None:
    """Print every answer after its prompt."""
    from ..runtime.group import is_main_process

    if is_main_process():
        for i, answer in enumerate(answers):
            print_prompt(i)
            print(f"{answer_prefix}{answer}")
            print(SEPARATOR)


def complete(
    generator: "Llama",
    inputs: Union[List[str], List[Dialog]],
    temperature: float,
    top_p: float,
    max_gen_len: Optional[int],
    *,
    chat: bool,
    stream: bool = False,
    compiled: bool = False,
    options: Optional[dict] = None,
) -> None:
    """What Meta's example scripts print (on rank 0) for `inputs`, prompts or (chat=True) dialogs,
    in their layout, streamed or at the end; then the summary line. options: sampling_options()."""
    from ..decoding.native_step import NativeDecode
    from ..streaming import stream_chat_completion, stream_text_completion

    prefix = "> Assistant: " if chat else "> "
    sampling: Any = dict(max_gen_len=max_gen_len, temperature=temperature, top_p=top_p, **(options or {}))
    dialogs, prompts = cast(List[Dialog], inputs), cast(List[str], inputs)
    if chat:
        prompt_tokens = generator.encode_dialogs(dialogs, max_gen_len)[0]
        show: Callable[[int], None] = lambda i: print_dialog(dialogs[i])  # noqa: E731
    else:
        prompt_tokens = generator.encode_prompts(prompts, max_gen_len)[0]
        show = lambda i: print(prompts[i])  # noqa: E731
    note_clipped([len(t) for t in prompt_tokens], max_gen_len, generator.model.params.max_seq_len)
    if stream:
        events = stream_chat_completion(generator, dialogs, **sampling) if chat else \
            stream_text_completion(generator, prompts, **sampling)  # fmt: skip
        print_streamed(events, show, prefix)
    elif chat:
        chats = generator.chat_completion(dialogs, **sampling)
        print_answers([r["generation"]["content"] for r in chats], show, prefix)
    else:
        print_answers([r["generation"] for r in generator.text_completion(prompts, **sampling)], show, prefix)
    # Both ways count the tokens generate returned (no stop tokens), as Llama.last_timings has them.
    log_summary(generator.last_timings, compiled and not isinstance(generator.decode_step, NativeDecode))
