"""Concurrent requests through llama.decoding.engine.Engine: aggregate decode tokens/s and time to
first token at N streams, against `Llama.generate` with the same prompts in one batch.

    python benchmarks/bench_engine.py --shape cpu-330M --cache_dir CACHE --formats int4,int8,bfloat16
    python benchmarks/bench_engine.py --shape 7B --n_layers 4 --cache_dir CACHE --concurrency 1,4,8

Each format is measured in a fresh process over `Llama.build(..., max_batch_size=8)` (int4 and
int8: quantize=; bfloat16: dtype=). A round submits N requests at once (distinct random prompts
of --prompt_len tokens, prompt cache off, greedy, no stop token: every request makes exactly
--gen_len tokens) and timestamps every token as its consumer thread receives it.

- TTFT: submission to a request's first token (median over the round's requests and repeats).
- decode tok/s: the steady rate, while every request of the round decodes (from the last first
  token to the first request's last token: tokens in that window over its length; N = 1: the
  tokens after the first over their time).
- span tok/s: the tokens after each request's first over the span from the earliest first token
  to the round's last token, which includes the later requests' prompt chunks (the engine computes
  one per round, between decode steps) and the ramp up and down: a conservative figure.
- end-to-end tok/s: all tokens over submission to the last token.
- generate: `Llama.generate` on the same N prompts as one batch; decode tok/s as
  bench_generate.py counts it (a 1-token run gives the prompt time, which is subtracted).
- roofline copy: weight bytes per decode step x steps/s (decode tok/s / N) / copy bandwidth.
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

from bench_generate import add_model_source, bytes_per_step, machine, make_checkpoint, measure_bandwidth, time_rows

FORMATS = {"int4": dict(quantize="int4"), "int8": dict(quantize="int8"), "bfloat16": dict(dtype="bfloat16")}
FORMATS["float32"] = dict(dtype="float32")
ROUND_TIMEOUT_S = 900.0  # a round that takes longer than this is an error, not a figure


class BenchError(RuntimeError):
    """The benchmark could not produce a figure (a worker failed, a round timed out or came up short)."""


async def consume_all(handles, consume, timeout: float) -> None:
    """consume(i, handle) for every handle at once; past `timeout` seconds all are cancelled (BenchError)."""
    try:
        await asyncio.wait_for(asyncio.gather(*(consume(i, h) for i, h in enumerate(handles))), timeout)
    except asyncio.TimeoutError as exc:
        for h in handles:
            h.cancel()
        raise BenchError(f"a round of {len(handles)} requests took more than {timeout:.0f} s") from exc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_source(p, cache_dir="benchcache")
    p.add_argument("--formats", default="int4,int8,bfloat16", help=f"comma-separated, of {sorted(FORMATS)}")
    p.add_argument("--concurrency", default="1,4,8", help="comma-separated numbers of concurrent requests")
    p.add_argument("--max_batch_size", type=int, default=8, help="Llama.build(max_batch_size=): the engine's slots")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per N (medians reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--no_generate", action="store_true", help="skip the Llama.generate comparison")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bad = [f for f in args.formats.split(",") if f not in FORMATS]
    if bad:
        p.error(f"unknown format(s) {bad}; choose from {sorted(FORMATS)}")
    return args


def prompts(n: int, length: int, vocab: int, seed: int) -> List[List[int]]:
    import torch

    rows = torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    return [[1] + r[1:] for r in rows.tolist()]  # bos first, as encoded prompts have it


def engine_round(engine, rows: List[List[int]], gen_len: int) -> dict:
    """Submit every row at once; -> timings of the round and each request's tokens.

    The tokens are received as the server receives them: on one asyncio loop (its own thread), each
    stamped when the loop sees it."""
    from llama.decoding.requests import Request
    from llama.decoding.sampler import SamplingParams

    greedy = SamplingParams(temperature=0.0)
    stamps: List[List[float]] = [[] for _ in rows]
    tokens: List[List[int]] = [[] for _ in rows]

    async def consume(i: int, handle) -> None:
        async for event in handle.async_events():
            if event.token is not None:
                stamps[i].append(time.perf_counter())
                tokens[i].append(event.token)

    async def submit_all() -> None:
        loop = asyncio.get_running_loop()
        requests = [Request(row, gen_len, greedy, stop_tokens=(), cache_prompt=False) for row in rows]
        handles = [engine.submit(r, loop) for r in requests]
        await consume_all(handles, consume, ROUND_TIMEOUT_S)

    start = time.perf_counter()
    asyncio.run(submit_all())
    if any(len(s) != gen_len for s in stamps):
        raise BenchError(f"a request made {min(len(s) for s in stamps)} tokens, not {gen_len}")
    first, end = min(s[0] for s in stamps), max(s[-1] for s in stamps)
    all_in, first_out = max(s[0] for s in stamps), min(s[-1] for s in stamps)  # every request decoding
    steady = sum(all_in < t <= first_out for s in stamps for t in s) / (first_out - all_in)
    return dict(
        ttft=[s[0] - start for s in stamps],
        decode=steady if len(rows) > 1 else (len(stamps[0]) - 1) / (end - first),
        span=sum(len(s) - 1 for s in stamps) / (end - first),
        e2e=sum(len(s) for s in stamps) / (end - start),
        tokens=tokens,
    )


def generate_round(generator, rows: List[List[int]], gen_len: int) -> dict:
    first, total, out = time_rows(generator, rows, gen_len)
    n = len(rows)
    decode = n * (gen_len - 1) / (total - first)
    return dict(ttft=first, decode=decode, span=decode, e2e=n * gen_len / total, tokens=out)


def worker(args: argparse.Namespace) -> dict:
    import torch

    from llama import Llama
    from llama.decoding.engine import Engine

    torch.set_num_threads(args.threads)
    concurrency = [int(n) for n in args.concurrency.split(",")]
    generator = Llama.build(args.ckpt_dir, args.tokenizer_path, max_seq_len=args.prompt_len + args.gen_len,
                            max_batch_size=args.max_batch_size, **FORMATS[args.format])  # fmt: skip
    generator.tokenizer.stop_tokens = []  # Llama.generate: never stop early
    vocab = generator.model.params.vocab_size
    bandwidth = measure_bandwidth(generator.device, 512 << 20)
    weights, _ = bytes_per_step(generator.model, 1, args.prompt_len)
    engine = Engine(generator, max_queue=64)
    rows_out: List[Dict] = []
    seed = 1000
    try:
        engine_round(engine, prompts(max(concurrency), args.prompt_len, vocab, seed), args.gen_len)  # warm-up
        for n in concurrency:
            rounds = []
            for _ in range(args.repeats):
                seed += 1
                rounds.append(engine_round(engine, prompts(n, args.prompt_len, vocab, seed), args.gen_len))
            rows_out.append(summary("engine", n, rounds, weights, bandwidth[0]))
    finally:
        engine.close(drain=False, timeout=60)
    if not args.no_generate:
        n = max(concurrency)
        same = prompts(n, args.prompt_len, vocab, seed)  # the last engine round's prompts
        generate_round(generator, same, args.gen_len)  # warm-up
        rounds = [generate_round(generator, same, args.gen_len) for _ in range(args.repeats)]
        row = summary("generate", n, rounds, weights, bandwidth[0])
        row["tokens_equal"] = sum(a == b for a, b in zip(rounds[-1]["tokens"], last_engine_tokens(rows_out)))
        rows_out.append(row)
    return dict(copy_gb_s=bandwidth[0], read_gb_s=bandwidth[1], weight_mb=weights / 1e6, rows=rows_out)


def last_engine_tokens(rows_out: List[Dict]) -> List[List[int]]:
    return rows_out[-1].pop("last_tokens", [])


def summary(kind: str, n: int, rounds: List[dict], weights: int, copy_gb_s: float) -> dict:
    ttfts = [t for r in rounds for t in (r["ttft"] if isinstance(r["ttft"], list) else [r["ttft"]])]
    decode = statistics.median(r["decode"] for r in rounds)
    return dict(
        kind=kind,
        n=n,
        ttft_ms=1e3 * statistics.median(ttfts),
        ttft_max_ms=1e3 * max(ttfts),
        decode_tok_s=decode,
        decode_all=[round(r["decode"], 1) for r in rounds],
        span_tok_s=statistics.median(r["span"] for r in rounds),
        e2e_tok_s=statistics.median(r["e2e"] for r in rounds),
        roofline_copy=weights * decode / n / 1e9 / copy_gb_s,
        last_tokens=rounds[-1]["tokens"],
    )


def report(shape: str, fmt: str, result: dict) -> List[str]:
    lines = []
    rows = result["rows"]
    one = next((r["decode_tok_s"] for r in rows if r["kind"] == "engine" and r["n"] == 1), None)
    for r in rows:
        vs = f"{r['decode_tok_s'] / one:.2f}x" if one else ""
        cells = [shape, fmt, r["kind"], r["n"], f"{r['ttft_ms']:.0f}", f"{r['ttft_max_ms']:.0f}",
                 f"{r['decode_tok_s']:.1f}", " / ".join(map(str, r["decode_all"])), vs,
                 f"{r['span_tok_s']:.1f}", f"{r['e2e_tok_s']:.1f}", f"{100 * r['roofline_copy']:.0f} %"]  # fmt: skip
        if "tokens_equal" in r:
            cells[2] += f" (tokens = engine's: {r['tokens_equal']}/{r['n']})"
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


HEAD = ("shape", "format", "path", "N", "TTFT ms (median)", "TTFT ms (max)", "decode tok/s (median)",
        "decode tok/s (rounds)", "x N=1", "span tok/s", "end-to-end tok/s", "roofline copy")  # fmt: skip


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = worker(argparse.Namespace(**json.loads(args.worker)))
        for r in result["rows"]:
            r.pop("last_tokens", None)
        print("RESULT " + json.dumps(result))
        return
    if args.shape:
        ckpt, tok = make_checkpoint(argparse.Namespace(**{**vars(args), "dtype": None}), Path(args.cache_dir))
        args.ckpt_dir, args.tokenizer_path = str(ckpt), args.tokenizer_path or str(tok)
        shape = f"{args.shape}" + (f", {args.n_layers} layers" if args.n_layers else "")
    elif not args.tokenizer_path:
        raise SystemExit("error: --tokenizer_path is required with --ckpt_dir")
    else:
        shape = Path(args.ckpt_dir).name
    print(f"machine: {machine()}")
    print(f"checkpoint {args.ckpt_dir}; prompt {args.prompt_len} tokens, {args.gen_len} generated, "
          f"{args.repeats} rounds per N, threads {args.threads}, max_batch_size {args.max_batch_size}")  # fmt: skip
    print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD), flush=True)
    results = {}
    for fmt in args.formats.split(","):
        job = dict(vars(args), format=fmt, worker=None)
        cmd = [sys.executable, __file__, "--ckpt_dir", args.ckpt_dir, "--worker", json.dumps(job)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.stderr.write(proc.stderr[-4000:])
            raise BenchError(f"the measuring process for {fmt} failed (exit {proc.returncode})")
        results[fmt] = json.loads(lines[-1][len("RESULT ") :])
        print("\n".join(report(shape, fmt, results[fmt])), flush=True)
        r = results[fmt]
        print(f"<!-- {fmt}: copy {r['copy_gb_s']:.1f} GB/s, {r['weight_mb']:.0f} MB of weights per step -->")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), machine=machine(), results=results), indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the checkout this script is in
    main()
