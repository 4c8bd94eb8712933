"""Time to first token of each turn of a chat, before and after the engine's prompt cache.

Before: every turn through `stream_chat_completion` (the reference's loop), which computes the
whole dialog again. After: `python -m llama.chat`'s way, the engine (llama.decoding.engine) with
one slot, whose cache still holds the conversation so far: a turn computes only its new tokens.
Both run the same greedy turns on the same model, in one process, and must give the same answers.

    python benchmarks/bench_chat.py --shape cpu-330M --cache_dir CACHE --turns 8 --gen_len 32
"""

import argparse
import contextlib
import io
import statistics
import time
from pathlib import Path

from bench_generate import add_model_source, machine, make_checkpoint  # beside this script (its folder is on sys.path)

QUESTIONS = [
    "What does the with statement do, and when should I use it in my programs?",
    "How is a list different from a tuple when both hold a sequence of values?",
    "Why would anyone pick a set instead of a list for membership tests?",
    "Explain what a generator function is and how yield hands values back.",
    "What happens when an exception is raised inside a try block with finally?",
    "How do keyword arguments and default values of a function work together?",
    "What is the difference between a module and a package in this language?",
    "How does a dictionary keep its keys, and what makes a key usable there?",
    "When should I write a class rather than a few plain functions?",
    "What does the global interpreter lock mean for threads doing arithmetic?",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_source(p, cache_dir="bench-cache")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: as Llama.build picks)")
    p.add_argument("--quantize", default=None, help="int8 or int4")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--gen_len", type=int, default=32, help="answer tokens per turn")
    p.add_argument("--max_seq_len", type=int, default=2048)
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = p.parse_args(argv)
    if not 1 <= args.turns <= len(QUESTIONS):
        p.error(f"--turns must be in [1, {len(QUESTIONS)}], got {args.turns}")
    return args


def before(generator, conversation_type, args):
    """Each turn through the reference's loop: -> [(prompt tokens, seconds to the first token, answer)]."""
    from llama.chat_format import encode_dialog
    from llama.streaming import stream_chat_completion

    conversation = conversation_type(generator.tokenizer, args.max_seq_len, args.gen_len)
    out = []
    for question in QUESTIONS[: args.turns]:
        dialog = conversation.ask(question)
        started, first, pieces = time.perf_counter(), None, []
        for event in stream_chat_completion(generator, [dialog], 0.0, 1.0, args.gen_len):
            if first is None:
                first = time.perf_counter() - started
            pieces.append(event.text)
        answer = "".join(pieces)
        conversation.answer(answer)
        out.append((len(encode_dialog(generator.tokenizer, dialog)), first, 0, answer))
    return out


def after(generator, conversation_type, args):
    """Each turn through the engine, as llama.chat runs it: -> [(prompt tokens, seconds, cached, answer)]."""
    from llama.cli.chat_turn import Responder
    from llama.decoding.engine import Engine
    from llama.decoding.sampler import SamplingParams

    engine = Engine(generator, max_queue=1)
    try:
        respond = Responder(engine, generator.tokenizer, SamplingParams(temperature=0.0), args.gen_len)
        conversation = conversation_type(generator.tokenizer, args.max_seq_len, args.gen_len)
        out = []
        for question in QUESTIONS[: args.turns]:
            dialog = conversation.ask(question)
            with contextlib.redirect_stdout(io.StringIO()):  # Responder streams to stdout, as the chat does
                answer = respond(dialog)
            conversation.answer(answer.text)
            c = answer.completion
            out.append((c.prompt_tokens, answer.first_token_s, c.cached_tokens, answer.text))
        return out
    finally:
        engine.close(drain=False)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from llama import Llama
    from llama.cli.chat import Conversation

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shape:
        ckpt, tok = make_checkpoint(args, Path(args.cache_dir))
    else:
        ckpt, tok = Path(args.ckpt_dir), args.tokenizer_path
    generator = Llama.build(str(ckpt), None if tok is None else str(tok), args.max_seq_len, 1,
                            device="cpu", dtype=args.dtype, quantize=args.quantize)  # fmt: skip
    before(generator, Conversation, args)  # warm-up: first calls pay one-time costs
    old = before(generator, Conversation, args)
    new = after(generator, Conversation, args)
    same = [a[3] == b[3] for a, b in zip(old, new)]
    fmt = args.quantize or args.dtype or ""
    print(f"machine: {machine()}; threads {torch.get_num_threads()}; {ckpt.name} {fmt}")
    columns = ["turn", "prompt tokens", "first token, whole dialog (s)", "first token, engine (s)", "from the cache"]
    print("| " + " | ".join(columns) + " | speed-up |")
    print("|---|---|---|---|---|---|")
    for turn, ((n, t_old, _, _), (_, t_new, cached, _)) in enumerate(zip(old, new), 1):
        print(f"| {turn} | {n} | {t_old:.3f} | {t_new:.3f} | {cached} | {t_old / t_new:.1f}x |")
    print(f"answers equal on both paths: {sum(same)}/{len(same)} turns")
    later = [o[1] / n[1] for o, n in zip(old[1:], new[1:])]
    if later:
        print(f"median speed-up of turns 2..{len(old)}: {statistics.median(later):.1f}x")


if __name__ == "__main__":
    main()
