"""Concurrent streamed /v1/completions against OpenAI-compatible servers: aggregate tokens/s, time to
first token and inter-token latency at C concurrent clients, this project's server and llama.cpp's
llama-server driven alike.

    python benchmarks/bench_server.py --servers ours,llama.cpp --llama_server BIN --gguf demo-f32.gguf
    python benchmarks/bench_server.py --servers ours --ckpt_dir CKPT --tokenizer_path TOK --quantize int4
    python benchmarks/bench_server.py --url http://127.0.0.1:8000    # a server that is already running

Each server is started on 127.0.0.1 at a free port (ours: `python -m llama.server --max_batch_size
N`; llama.cpp: `llama-server -np N -c N*ctx -t T --cont-batching`, the same slots and context per
slot), all of them before the first load, then every round runs each concurrency on each server in
turn (the order alternating), so that they share the machine's conditions. A load is C clients,
each sending --requests_per_client requests one after another (distinct prompts, temperature 0,
max_tokens fixed, `stream: true` with `stream_options.include_usage`); every request and the load as
a whole have timeouts. Tokens are the usage's completion_tokens (both servers send it last); TTFT
is the request's send to its first text chunk; ITL the gaps between a request's text chunks
(`tok/chunk` says whether a chunk is one token). Aggregate tok/s: all completion tokens over the
load's wall time. Medians over the rounds.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

REQUEST_TIMEOUT_S = 300.0
WORDS = (
    "the a of to in function module class return value list string file object method error type call "
    "python code data name number time line default option test thread process system path user key"
).split()


class BenchError(RuntimeError):
    """A server did not start, answered an error, or a load ran past its timeout."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="ours", help="comma-separated: ours, llama.cpp")
    p.add_argument("--url", help="drive this running server instead (http://HOST:PORT)")
    p.add_argument("--ckpt_dir", help="ours: --ckpt_dir (default: the bundled demo model)")
    p.add_argument("--tokenizer_path", help="ours: --tokenizer_path")
    p.add_argument("--quantize", help="ours: --quantize (int8, int4)")
    p.add_argument("--llama_server", default="llama-server", help="llama.cpp's llama-server binary")
    p.add_argument("--gguf", help="llama.cpp: the GGUF file")
    p.add_argument("--max_batch_size", type=int, default=8, help="ours --max_batch_size, llama.cpp -np")
    p.add_argument("--ctx", type=int, default=256, help="context per slot: ours --max_seq_len, llama.cpp -c N*ctx")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp -t; ours OMP_NUM_THREADS")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated numbers of concurrent clients")
    p.add_argument("--requests_per_client", type=int, default=2)
    p.add_argument("--prompt_words", type=int, default=24, help="words per prompt (distinct prompts)")
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1, help="loads per (server, C); medians reported")
    p.add_argument("--load_timeout", type=float, default=900.0, help="seconds one load may take")
    p.add_argument("--start_timeout", type=float, default=300.0, help="seconds a server may take to start")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, args: argparse.Namespace, port: int) -> List[str]:
    n = str(args.max_batch_size)
    if name == "ours":
        cmd = [sys.executable, "-m", "llama.server", "--host", "127.0.0.1", "--port", str(port),
               "--max_batch_size", n, "--max_seq_len", str(args.ctx)]  # fmt: skip
        for flag in ("ckpt_dir", "tokenizer_path", "quantize"):
            if getattr(args, flag):
                cmd += [f"--{flag}", getattr(args, flag)]
        return cmd
    if name == "llama.cpp":
        if not args.gguf:
            raise BenchError("llama.cpp needs --gguf")
        return [args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port), "-np", n,
                "-c", str(args.max_batch_size * args.ctx), "-t", str(args.threads), "--cont-batching"]  # fmt: skip
    raise BenchError(f"unknown server {name!r}; choose ours or llama.cpp")


class Server:
    def __init__(self, name: str, url: str, proc: Optional[subprocess.Popen] = None, log: Optional[Path] = None):
        self.name, self.url, self.proc, self.log = name, url, proc, log
        self.model = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start(name: str, args: argparse.Namespace, logdir: Path) -> Server:
    port = free_port()
    log = logdir / f"{name}.log"
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))  # ours: as many threads as llama.cpp's -t
    out = log.open("w")
    proc = subprocess.Popen(command(name, args, port), stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)
    return Server(name, f"http://127.0.0.1:{port}", proc, log)


async def wait_ready(server: Server, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise BenchError(f"{server.name} exited ({server.proc.returncode}); see {server.log}")
            try:
                r = await client.get(f"{server.url}/v1/models")
                if r.status_code == 200:
                    server.model = r.json()["data"][0]["id"]
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            await asyncio.sleep(0.5)
    raise BenchError(f"{server.name} did not answer /v1/models within {timeout:.0f} s; see {server.log}")


def make_prompt(i: int, words: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


async def one_request(client, server: Server, prompt: str, max_tokens: int) -> dict:
    body = dict(model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True})  # fmt: skip
    stamps: List[float] = []
    usage = None
    sent = time.perf_counter()
    async with client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise BenchError(f"{server.name} answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any(c.get("text") for c in chunk.get("choices") or []):
                stamps.append(time.perf_counter())
    if usage is None or not stamps:
        raise BenchError(f"{server.name} sent {'no usage' if stamps else 'no text'} for a streamed completion")
    return dict(ttft=stamps[0] - sent, gaps=[b - a for a, b in zip(stamps, stamps[1:])], chunks=len(stamps),
                tokens=usage["completion_tokens"], prompt_tokens=usage["prompt_tokens"])  # fmt: skip


async def greedy_text(server: Server, prompt: str, max_tokens: int) -> str:
    """One non-streamed greedy completion: the sanity check that every server holds the same model."""
    import httpx

    body = dict(model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        r = await client.post(f"{server.url}/v1/completions", json=body)
    if r.status_code != 200:
        raise BenchError(f"{server.name} answered {r.status_code}: {r.text[:300]!r}")
    return r.json()["choices"][0]["text"]


async def load(server: Server, c: int, args: argparse.Namespace, first_prompt: int) -> dict:
    import httpx

    # A new connection per request: llama-server closes idle keep-alive connections after a few
    # seconds, and a request sent on one it has just closed fails without an answer.
    limits = httpx.Limits(max_connections=c + 1, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def client_loop(k: int) -> List[dict]:
            out = []
            for j in range(args.requests_per_client):
                prompt = make_prompt(first_prompt + k * args.requests_per_client + j, args.prompt_words)
                out.append(await one_request(client, server, prompt, args.max_tokens))
            return out

        start = time.perf_counter()
        try:
            done = await asyncio.wait_for(asyncio.gather(*(client_loop(k) for k in range(c))), args.load_timeout)
        except asyncio.TimeoutError as exc:
            raise BenchError(f"{server.name}: a load of {c} clients ran past {args.load_timeout:.0f} s") from exc
        wall = time.perf_counter() - start
    results = [r for rs in done for r in rs]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return dict(
        requests=len(results), tokens=tokens, wall_s=wall, tok_s=tokens / wall,
        ttft_ms=1e3 * statistics.median(r["ttft"] for r in results),
        ttft_p90_ms=1e3 * p90([r["ttft"] for r in results]),
        itl_ms=1e3 * statistics.median(gaps) if gaps else 0.0, itl_p90_ms=1e3 * p90(gaps) if gaps else 0.0,
        tok_per_chunk=tokens / sum(r["chunks"] for r in results),
        prompt_tokens=statistics.median(r["prompt_tokens"] for r in results),
    )  # fmt: skip


def p90(values: List[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.9 * len(values)))]


FIELDS = ("tok_s", "ttft_ms", "ttft_p90_ms", "itl_ms", "itl_p90_ms", "tok_per_chunk", "tokens", "prompt_tokens")
HEAD = ("server", "C", "requests", "tokens", "aggregate tok/s", "TTFT ms median", "TTFT ms p90", "ITL ms median",
        "ITL ms p90", "tok/chunk", "prompt tokens")  # fmt: skip


def row(name: str, c: int, rounds: List[dict]) -> Dict:
    med = {f: statistics.median(r[f] for r in rounds) for f in FIELDS}
    return dict(server=name, c=c, requests=rounds[0]["requests"], rounds=rounds, **med)


def format_row(r: Dict) -> str:
    cells = (r["server"], r["c"], r["requests"], f"{r['tokens']:.0f}", f"{r['tok_s']:.1f}", f"{r['ttft_ms']:.0f}",
             f"{r['ttft_p90_ms']:.0f}", f"{r['itl_ms']:.1f}", f"{r['itl_p90_ms']:.1f}", f"{r['tok_per_chunk']:.2f}",
             f"{r['prompt_tokens']:.0f}")  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


async def run(args: argparse.Namespace, servers: List[Server]) -> List[Dict]:
    for s in servers:
        await wait_ready(s, args.start_timeout)
        await load(s, 1, argparse.Namespace(**{**vars(args), "requests_per_client": 1}), 10**6)  # warm-up
    texts = [await greedy_text(s, make_prompt(0, args.prompt_words), 32) for s in servers]
    for s, text in zip(servers, texts):
        print(f"<!-- {s.name}, greedy, 32 tokens: {text!r} -->")
    print(f"<!-- the same greedy text from every server: {len(set(texts)) == 1} -->", flush=True)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    got: Dict[tuple, List[dict]] = {}
    for k in range(args.rounds):
        for c in concurrency:
            order = servers if k % 2 == 0 else servers[::-1]
            for s in order:
                r = await load(s, c, args, first_prompt=1000 * k + 100 * c)  # the same prompts for every server
                got.setdefault((s.name, c), []).append(r)
                print(f"<!-- round {k + 1}: {format_row(row(s.name, c, [r]))} -->", flush=True)
    return [row(name, c, rounds) for (name, c), rounds in got.items()]


def main(argv=None) -> None:
    import tempfile

    args = parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="bench_server_"))
    servers: List[Server] = []
    try:
        if args.url:
            servers = [Server("url", args.url.rstrip("/"))]
        else:
            servers = [start(name, args, logdir) for name in args.servers.split(",")]
        print(f"servers: {', '.join(s.name + ' ' + s.url for s in servers)} (logs in {logdir}); "
              f"max_tokens {args.max_tokens}, {args.prompt_words}-word prompts, {args.requests_per_client} "
              f"requests per client, {args.rounds} round(s)", flush=True)  # fmt: skip
        rows = asyncio.run(run(args, servers))
    finally:
        for s in servers:
            s.stop()
    print("| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD))
    for r in sorted(rows, key=lambda r: (r["c"], r["server"])):
        print(format_row(r))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=1))


if __name__ == "__main__":
    main()
