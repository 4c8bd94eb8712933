"""Decode speed at context depth, timed from the tokens' own arrival times, beside llama.cpp's `llama-bench -d`.

    python benchmarks/bench_depth.py --shape 7B --n_layers 4 --cache_dir CACHE --quantize int4 \\
        --depths 512,2048,8192 --batch_sizes 1,8 --llama_cpp BIN_DIR --gguf q4_0.gguf
    python benchmarks/bench_depth.py --shape cpu-330M --n_layers 2 --depths 128,256 --batch_sizes 1,2 --repeats 1

The Llama is built once (--dtype, --quantize, --threads; max_seq_len the deepest prompt plus
--gen_len rounded up to 256, max_batch_size the largest batch). For each depth D (and first
--base_depth, the reference), each batch size B submits B requests of D-token prompts (random
tokens after bos, distinct per depth and batch, greedy, no stop token: every request makes
exactly --gen_len tokens) and stamps every token as it arrives:

- --path engine (default): `llama.decoding.engine.Engine`, the B requests submitted in one go
  (under the engine's lock, so that one scheduler round admits them all and their prompts run in
  step), tokens received on an asyncio loop as the server receives them. The first round of each
  (D, B) computes the prompts; the later rounds resubmit them and the prompt cache holds all but
  the last prompt token, so only the first round pays for the prompt (llama-bench does the same:
  its depth is computed once, then restored). The decode steps are the same work either way.
- --path stream: `llama.streaming.stream_generate`, the B prompts as one `Llama.generate` batch,
  every round from scratch. That path computes a prompt in one forward call whose attention scores
  are heads x D x D floats (several GB per layer at D = 8192), so keep it to shallow depths.

Figures, each a median over the --repeats rounds (min-max beside it):
- decode tok/s: per sequence (tokens after its first) / (its last token's time - the moment every
  sequence of the round has its first token), summed over the batch. For B = 1 that is (tokens
  after the first) / (last - first); for B > 1 the window starts once the last prompt is done, so
  that the other prompts' steps, which the engine runs before the first decode step, do not count
  as decode time. The decode steps cover positions D .. D + gen_len - 2.
- ms/step: 1 / the median sequence's rate. attention share: (step at D - step at --base_depth) /
  step at D, both measured in this run on this build; llama.cpp's the same from its own figures.
- prompt tok/s: B x D / (submission to the last sequence's first token), the first round only
  (the one that computes the prompts; every round with --path stream); TTFT the same time.
- llama.cpp (--llama_cpp BIN_DIR --gguf PATH, batch 1 only: llama-bench decodes one sequence):
  `llama-bench -m GGUF -t THREADS -p 0 -n GEN_LEN -d D -r REPEATS -o json` (decode at depth D;
  median of its samples, min-max), and `-p D -n 0 -r N` (prompt processing of D tokens from an
  empty context). Per depth, ours and llama.cpp's run back to back, the order alternating.

Cost: the prompts, not the decoding. Each (D, B) computes B x D prompt tokens once (slower the
deeper they go: attention), llama-bench 3 x D per depth (its depth once, the -p D warm-up and
run; --llama_cpp_prompt_reps 0 skips the last two). B = 8 at D = 8192 is 65536 prompt tokens.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from bench_engine import BenchError, consume_all, prompts
from bench_generate import add_model_source, machine, make_checkpoint

BLOCK = 256  # the default --max_seq_len is a multiple of this


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_source(p, cache_dir="benchcache")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 (default: as Llama.build picks)")
    p.add_argument("--quantize", choices=("int8", "int4"), help="Llama.build(quantize=...)")
    p.add_argument("--kv_cache_dtype", choices=("float32", "bfloat16", "int8"), help="Llama.build(kv_cache_dtype=)")
    p.add_argument("--device", default=None, help="as Llama.build takes it (default: its choice)")
    p.add_argument("--depths", default="512,2048,8192", help="comma-separated prompt lengths to decode after")
    p.add_argument("--base_depth", type=int, default=32, help="the shallow reference for the attention share")
    p.add_argument("--batch_sizes", default="1,8", help="comma-separated numbers of sequences decoding together")
    p.add_argument("--gen_len", type=int, default=32, help="tokens per request (llama-bench -n)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per (depth, batch) (llama-bench -r)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads; llama-bench -t")
    p.add_argument("--max_seq_len", type=int, help="Llama.build(max_seq_len=) (default: deepest + gen_len, to 256s)")
    p.add_argument("--path", choices=("engine", "stream"), default="engine", help="what produces the tokens")
    p.add_argument("--round_timeout", type=float, default=3600.0, help="seconds one round may take")
    p.add_argument("--llama_cpp", metavar="BIN_DIR", help="llama.cpp's build/bin (llama-bench), side by side")
    p.add_argument("--gguf", help="with --llama_cpp: the GGUF file of the same model")
    p.add_argument("--llama_cpp_prompt_reps", type=int, default=1, help="llama-bench -r of the -p D runs (0: none)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.depth_list = [int(d) for d in args.depths.split(",")]
    args.batch_list = [int(b) for b in args.batch_sizes.split(",")]
    if min(args.depth_list + args.batch_list + [args.base_depth, args.repeats]) < 1 or args.gen_len < 3:
        p.error("depths, batch sizes, --base_depth and --repeats must be positive, --gen_len at least 3")
    if bool(args.llama_cpp) != bool(args.gguf):
        p.error("--llama_cpp and --gguf go together")
    return args


# ---- ours ----


def engine_round(engine, rows: List[List[int]], gen_len: int, timeout: float):
    """Submit every row at once to the engine; -> (submission time, each row's token arrival times)."""
    from llama.decoding.requests import Request
    from llama.decoding.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    stamps: List[List[float]] = [[] for _ in rows]

    async def consume(i: int, handle) -> None:
        async for event in handle.async_events():
            if event.token is not None:
                stamps[i].append(time.perf_counter())

    async def run() -> float:
        loop = asyncio.get_running_loop()
        requests = [Request(row, gen_len, greedy, stop_tokens=()) for row in rows]
        start = time.perf_counter()
        # Held across the submissions (the engine's Condition wraps an RLock, which submit takes
        # again): else the scheduler can wake after the first and start its prompt a chunk ahead,
        # and that sequence then decodes alone while the others' prompts run one chunk per step.
        with engine._lock:
            handles = [engine.submit(r, loop) for r in requests]
        await consume_all(handles, consume, timeout)
        return start

    start = asyncio.run(run())
    return start, stamps


def stream_round(generator, rows: List[List[int]], gen_len: int, timeout: float):
    """The rows as one stream_generate batch; -> (call time, each row's token arrival times)."""
    from llama.streaming import stream_generate

    stamps: List[List[float]] = [[] for _ in rows]
    start = time.perf_counter()
    for event in stream_generate(generator, rows, gen_len, temperature=0.0):
        if event.token is not None:
            stamps[event.index].append(time.perf_counter())
        if time.perf_counter() - start > timeout:
            raise BenchError(f"a round of {len(rows)} rows took more than {timeout:.0f} s")
    return start, stamps


def round_figures(start: float, stamps: List[List[float]], gen_len: int) -> dict:
    """Decode and prompt figures of one round from its token arrival times (see the module docstring)."""
    if any(len(s) != gen_len for s in stamps):
        raise BenchError(f"a sequence made {min(len(s) for s in stamps)} tokens, not {gen_len}")
    all_in = max(s[0] for s in stamps)  # every sequence has its first token: decoding from here on
    per_seq = [(len(s) - 1) / (s[-1] - all_in) for s in stamps]
    return dict(
        decode_tok_s=sum(per_seq),
        seq_tok_s=statistics.median(per_seq),
        ttft_s=all_in - start,
        # In step: every sequence's second token came after the last one's first (else some decoded
        # while others were still computing their prompts, and the window above is not B-wide).
        in_step=min(s[1] for s in stamps) >= all_in,
    )


def measure(produce, rows: List[List[int]], args, cold_first_only: bool) -> dict:
    """--repeats rounds of these rows -> medians and ranges; the prompt rate from the rounds that
    computed the prompts (the first, or all of them)."""
    rounds = [round_figures(*produce(rows), args.gen_len) for _ in range(args.repeats)]
    cold = rounds[:1] if cold_first_only else rounds
    decode = [r["decode_tok_s"] for r in rounds]
    seq = statistics.median(r["seq_tok_s"] for r in rounds)
    ttft = statistics.median(r["ttft_s"] for r in cold)
    n, depth = len(rows), len(rows[0])
    return dict(
        batch=n,
        depth=depth,
        decode_tok_s=statistics.median(decode),
        decode_min=min(decode),
        decode_max=max(decode),
        decode_rounds=[round(d, 2) for d in decode],
        ttft_rounds_ms=[round(1e3 * r["ttft_s"], 1) for r in rounds],  # the engine's later rounds: prompt cache
        seq_tok_s=seq,
        step_ms=1e3 / seq,
        ttft_ms=1e3 * ttft,
        prompt_tok_s=n * depth / ttft,
        in_step=all(r["in_step"] for r in rounds),
    )


# ---- llama.cpp ----


def llama_bench(args, *flags: str) -> List[dict]:
    binary = Path(args.llama_cpp) / "llama-bench"
    cmd = [str(binary), "-m", args.gguf, "-t", str(args.threads), *flags, "-o", "json"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=args.round_timeout)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise BenchError(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    return json.loads(proc.stdout)


def check_llama_bench(args) -> None:
    """llama-bench must exist and know -d (--n-depth): llama.cpp builds since mid 2025 do."""
    binary = Path(args.llama_cpp) / "llama-bench"
    if not binary.is_file():
        raise BenchError(f"no llama-bench in {args.llama_cpp} (build it: cmake --build build --target llama-bench)")
    if not Path(args.gguf).is_file():
        raise BenchError(f"no GGUF file at {args.gguf}")
    usage = subprocess.run([str(binary), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if "--n-depth" not in usage.stdout:
        raise BenchError(f"{binary} has no -d/--n-depth flag; build a newer llama.cpp")


def llama_cpp_depth(args, depth: int, with_prompt: bool) -> dict:
    """llama-bench's decode at this depth (batch 1) and, with_prompt, its prompt rate at -p depth."""
    tg = llama_bench(args, "-p", "0", "-n", str(args.gen_len), "-d", str(depth), "-r", str(args.repeats))[0]
    samples = tg.get("samples_ts") or [tg["avg_ts"]]
    out = dict(
        decode_tok_s=statistics.median(samples),
        decode_min=min(samples),
        decode_max=max(samples),
        avg_ts=tg["avg_ts"],
        stddev_ts=tg["stddev_ts"],
        step_ms=1e3 / statistics.median(samples),
    )
    if with_prompt and args.llama_cpp_prompt_reps > 0:
        pp = llama_bench(args, "-p", str(depth), "-n", "0", "-r", str(args.llama_cpp_prompt_reps))[0]
        out.update(prompt_tok_s=pp["avg_ts"], prompt_stddev=pp["stddev_ts"])
    return out


# ---- the run ----

HEAD = ("depth", "batch", "decode tok/s (median)", "min-max", "tok/s per seq", "ms/step", "attention share",
        "prompt tok/s", "TTFT ms", "llama.cpp decode tok/s", "min-max", "llama.cpp ms/step",
        "llama.cpp attention share", "llama.cpp prompt tok/s (-p D)", "ours / llama.cpp")  # fmt: skip


def share(step_ms: float, base_ms: Optional[float]) -> str:
    return "-" if base_ms is None else f"{100 * (step_ms - base_ms) / step_ms:.0f} %"


def table_row(r: dict, base: Optional[dict], cpp: Optional[dict], cpp_base: Optional[dict]) -> str:
    cells = [r["depth"], r["batch"], f"{r['decode_tok_s']:.2f}", f"{r['decode_min']:.2f}-{r['decode_max']:.2f}",
             f"{r['seq_tok_s']:.2f}", f"{r['step_ms']:.1f}", share(r["step_ms"], base and base["step_ms"]),
             f"{r['prompt_tok_s']:.0f}", f"{r['ttft_ms']:.0f}"]  # fmt: skip
    if not r["in_step"]:
        cells[2] += " (not in step)"
    if cpp is not None:
        cells += [f"{cpp['decode_tok_s']:.2f}", f"{cpp['decode_min']:.2f}-{cpp['decode_max']:.2f}",
                  f"{cpp['step_ms']:.1f}", share(cpp["step_ms"], cpp_base and cpp_base["step_ms"]),
                  f"{cpp['prompt_tok_s']:.0f}" if "prompt_tok_s" in cpp else "-",
                  f"{r['decode_tok_s'] / cpp['decode_tok_s']:.2f}x"]  # fmt: skip
    else:
        cells += [""] * 6
    return "| " + " | ".join(map(str, cells)) + " |"


def run(args) -> dict:
    import torch

    from llama import Llama

    if args.llama_cpp:
        check_llama_bench(args)  # before the build: fail early
    torch.set_num_threads(args.threads)
    depths = [args.base_depth] + [d for d in args.depth_list if d != args.base_depth]
    # Rounded up to whole 256-token blocks: a paged cache (llama/kv_cache.py, where there is one) sized
    # max_batch_size x max_seq_len tokens then holds every slot at full length, as batch B needs.
    max_seq_len = args.max_seq_len or -(-(max(depths) + args.gen_len) // BLOCK) * BLOCK
    start = time.perf_counter()
    generator = Llama.build(args.ckpt_dir, args.tokenizer_path, max_seq_len=max_seq_len,
                            max_batch_size=max(args.batch_list), device=args.device, dtype=args.dtype,
                            quantize=args.quantize, kv_cache_dtype=args.kv_cache_dtype)  # fmt: skip
    load_s = time.perf_counter() - start
    generator.tokenizer.stop_tokens = []  # stream_generate: never stop early
    vocab = generator.model.params.vocab_size
    kv_mb = kv_cache_mb(generator.model)
    engine = None
    if args.path == "engine":
        from llama.decoding.engine import Engine

        engine = Engine(generator, max_queue=64)

        def produce(rows):
            return engine_round(engine, rows, args.gen_len, args.round_timeout)
    else:

        def produce(rows):
            return stream_round(generator, rows, args.gen_len, args.round_timeout)

    chunk = engine.prefill_chunk if engine is not None else "whole prompt"
    print(f"machine: {machine()}")
    print(f"checkpoint {args.ckpt_dir}; format {fmt_name(args)}, device {generator.device}, threads {args.threads}, "
          f"path {args.path} (prompt chunk {chunk}); max_seq_len {max_seq_len}, KV cache {kv_mb} MB; "
          f"load {load_s:.1f} s; {args.gen_len} tokens per request, {args.repeats} rounds")  # fmt: skip
    if args.llama_cpp:
        print(f"llama.cpp: {Path(args.llama_cpp) / 'llama-bench'} -m {args.gguf} -t {args.threads} "
              f"-p 0 -n {args.gen_len} -d D -r {args.repeats}; -p D -n 0 -r {args.llama_cpp_prompt_reps}")  # fmt: skip
    print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD), flush=True)
    rows_out: List[dict] = []
    cpp_out: Dict[int, dict] = {}
    base: Dict[int, dict] = {}
    try:
        produce(prompts(max(args.batch_list), args.base_depth, vocab, seed=1))  # warm-up
        for k, depth in enumerate(depths):
            measured: List[dict] = []
            for who in ("ours", "llama.cpp") if k % 2 == 0 else ("llama.cpp", "ours"):
                if who == "ours":
                    for b in args.batch_list:
                        rows = prompts(b, depth, vocab, seed=1000 * depth + b)
                        measured.append(measure(produce, rows, args, cold_first_only=engine is not None))
                elif args.llama_cpp and 1 in args.batch_list:
                    cpp_out[depth] = llama_cpp_depth(args, depth, with_prompt=depth != args.base_depth)
            for r in measured:
                cpp = cpp_out.get(depth) if r["batch"] == 1 else None
                if depth == args.base_depth:
                    base[r["batch"]] = r
                    print(table_row(r, None, cpp, None), flush=True)
                else:
                    r["attention_share"] = (r["step_ms"] - base[r["batch"]]["step_ms"]) / r["step_ms"]
                    print(table_row(r, base[r["batch"]], cpp, cpp_out.get(args.base_depth)), flush=True)
                rows_out.append(r)
    finally:
        if engine is not None:
            engine.close(drain=False, timeout=60)
    for depth, cpp in cpp_out.items():
        if depth != args.base_depth and args.base_depth in cpp_out:
            cpp["attention_share"] = (cpp["step_ms"] - cpp_out[args.base_depth]["step_ms"]) / cpp["step_ms"]
    kv_end = kv_cache_mb(generator.model)  # a cache that grows with its sequences: as far as they took it
    print(f"<!-- {time.perf_counter() - start:.0f} s in all; KV cache at the end {kv_end} MB -->")
    return dict(load_s=load_s, kv_cache_mb=kv_mb, kv_cache_end_mb=kv_end, max_seq_len=max_seq_len,
                prefill_chunk=chunk, rows=rows_out, llama_cpp={str(d): v for d, v in cpp_out.items()})  # fmt: skip


def kv_cache_mb(model) -> Optional[int]:
    """MB held by the layers' KV caches (their buffers), None where the model keeps them otherwise."""
    try:
        return round(sum(b.nbytes for layer in model.layers for b in layer.attention.cache.buffers()) / 1e6)
    except AttributeError:
        return None


def fmt_name(args) -> str:
    return args.quantize or args.dtype or "default dtype"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.shape:  # one float32 checkpoint for every format (--ckpt_dtype to change it), as bench_engine's
        ckpt, tok = make_checkpoint(argparse.Namespace(**{**vars(args), "dtype": None}), Path(args.cache_dir))
        args.ckpt_dir, args.tokenizer_path = str(ckpt), args.tokenizer_path or str(tok)
    elif not args.tokenizer_path:
        raise SystemExit("error: --tokenizer_path is required with --ckpt_dir")
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), machine=machine(), **result), indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the checkout this script is in
    main()
