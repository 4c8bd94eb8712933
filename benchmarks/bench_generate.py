"""Load time, peak memory, prefill and decode speed of Llama.build + generate, against the roofline.

    python benchmarks/bench_generate.py --shape cpu-330M --batch_sizes 1,4
    python benchmarks/bench_generate.py --shape 7B --device cuda --dtype bfloat16 --compile
    python benchmarks/bench_generate.py --ckpt_dir llama-2-7b --tokenizer_path tokenizer.model

A named shape is written as a random-weight Meta checkpoint (llama.synthetic) to a temporary
directory first, so loading is real. The measurements run in a fresh Python process, so that its
peak resident memory (VmHWM) is this model's and nothing else's.

Roofline: one decode step must read every weight once (and the KV cache up to the current
position), so decode can be no faster than bandwidth / bytes-per-step. Bandwidth is measured
here, on the target device, as a large tensor copy (bytes read + bytes written) and, for
reference, as a read-only sum.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

SHAPES = {  # Llama 2 layer shapes (params.json of the released models), and a small CPU model
    "7B": dict(dim=4096, n_layers=32, n_heads=32, multiple_of=256, norm_eps=1e-5),
    "13B": dict(dim=5120, n_layers=40, n_heads=40, multiple_of=256, norm_eps=1e-5),
    "70B": dict(
        dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3, norm_eps=1e-5
    ),
    "cpu-330M": dict(dim=768, n_layers=12, n_heads=12, multiple_of=256, norm_eps=1e-5),
}
VOCAB_SIZE = 32000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_source(p, cache_dir=None)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: as Llama.build picks)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: as Llama.build picks)")
    p.add_argument("--batch_sizes", default="1", help="comma-separated, e.g. 1,4")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (best and median reported)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--compile", action="store_true", help="Llama.build(compile=True)")
    p.add_argument("--quantize", default=None, help="Llama.build(quantize=...), e.g. int8")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def add_model_source(p: argparse.ArgumentParser, cache_dir: Optional[str]) -> None:
    """The flags that name the model a benchmark runs, as make_checkpoint reads them: --shape (random
    weights, written once under --cache_dir) or --ckpt_dir with --tokenizer_path."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(SHAPES), help="random weights of this Llama 2 shape")
    src.add_argument("--ckpt_dir", help="a checkpoint directory (Meta's layout)")
    p.add_argument("--tokenizer_path", help="its tokenizer (default with --shape: a made-up 32000-piece one)")
    p.add_argument("--n_layers", type=int, help="with --shape: fewer layers than the real model")
    p.add_argument(
        "--ckpt_dtype", default=None, help="with --shape: dtype written to disk (default: --dtype, else float32)"
    )
    p.add_argument("--cache_dir", default=cache_dir, help="with --shape: keep the written checkpoint here and reuse it")


def make_tokenizer(path: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """A SentencePiece model with exactly vocab_size pieces (unk 0, bos 1, eos 2), no download needed.

    llama.synthetic's trainer on Python's own help text; most pieces are filler symbols, which
    only the vocabulary size (the output projection's cost) makes matter.
    """
    from llama.testing.synthetic import train_sentencepiece

    fillers = [f"<filler{i}>" for i in range(vocab_size - 2000)]
    path.write_bytes(train_sentencepiece(vocab_size=vocab_size, user_defined_symbols=fillers))
    return path


def make_checkpoint(args, out_dir: Path):
    """-> (checkpoint dir, tokenizer path): a random-weight checkpoint of args.shape, written or reused."""
    import torch

    from llama.model import ModelArgs
    from llama.runtime.backend import parse_dtype
    from llama.testing.synthetic import params_dict, random_state
    from llama.weights.meta import save_checkpoint

    shape = dict(SHAPES[args.shape], vocab_size=VOCAB_SIZE)
    if args.n_layers:
        shape["n_layers"] = args.n_layers
    dtype = parse_dtype(args.ckpt_dtype or args.dtype) or torch.float32
    name = f"{args.shape}-{shape['n_layers']}L-{str(dtype).replace('torch.', '')}"
    ckpt, tok = out_dir / name, out_dir / "tokenizer.model"
    out_dir.mkdir(parents=True, exist_ok=True)
    if not tok.exists():
        make_tokenizer(tok)
    if not (ckpt / "params.json").exists():
        model_args = ModelArgs(**shape)
        save_checkpoint(random_state(model_args, seed=0, dtype=dtype), params_dict(model_args), ckpt)
    return ckpt, tok


def memory_kb():
    """(VmRSS, VmHWM) of this process in kB, from /proc (Linux); zeros elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        return 0, 0
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def measure_bandwidth(device, nbytes: int):
    """(copy GB/s counting bytes read + written, read-only GB/s) on device; best of 10."""
    import torch

    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = _best_time(lambda: dst.copy_(src), device)
    read = _best_time(lambda: src.sum(), device)
    return 2 * src.nbytes / copy / 1e9, src.nbytes / read / 1e9


def _best_time(fn, device, runs: int = 10) -> float:
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def reset_peak_memory() -> None:
    """Make VmHWM restart from the current RSS (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def bytes_per_step(model, bsz: int, context: int):
    """(weight bytes, KV-cache bytes) one decode step reads at `context` cached positions."""
    weights = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if k != "tok_embeddings.weight")
    emb = model.tok_embeddings.weight
    weights += bsz * emb.shape[1] * emb.element_size()
    kv = 0
    for layer in model.layers:
        k = layer.attention.cache.k
        kv += 2 * bsz * context * k.shape[1] * k.shape[3] * k.element_size()  # blocks of (kv_heads, pos, hd)
    return weights, kv


def time_generate(generator, bsz: int, prompt_len: int, gen_len: int):
    """(seconds to the first token, seconds for gen_len tokens), greedy, every row the same length."""
    import torch

    vocab = generator.model.params.vocab_size
    rows = torch.randint(3, vocab, (bsz, prompt_len), generator=torch.Generator().manual_seed(bsz)).tolist()
    first, total, _ = time_rows(generator, rows, gen_len)
    return first, total


def time_rows(generator, rows, gen_len: int):
    """(seconds to the first token, seconds for gen_len tokens, the tokens) of these prompts in one batch."""
    start = time.perf_counter()
    generator.generate(rows, max_gen_len=1, temperature=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    out, _ = generator.generate(rows, max_gen_len=gen_len, temperature=0)
    total = time.perf_counter() - start
    if any(len(t) != gen_len for t in out):
        raise RuntimeError("a row stopped early; the benchmark needs exactly gen_len tokens per row")
    return first, total, out


def measure_batch(generator, args, bsz: int, bandwidth) -> dict:
    firsts, decodes = [], []
    for _ in range(args.repeats):
        first, total = time_generate(generator, bsz, args.prompt_len, args.gen_len)
        firsts.append(first)
        decodes.append(bsz * (args.gen_len - 1) / (total - first))
    weights, kv = bytes_per_step(generator.model, bsz, args.prompt_len + args.gen_len // 2)
    best = max(decodes)
    steps_per_s = best / bsz
    return dict(
        batch=bsz,
        ttft_ms=1e3 * min(firsts),
        prefill_tok_s=bsz * args.prompt_len / min(firsts),
        decode_tok_s=best,
        decode_tok_s_median=sorted(decodes)[len(decodes) // 2],
        step_ms=1e3 / steps_per_s,
        weight_mb=weights / 1e6,
        kv_mb=kv / 1e6,
        achieved_gb_s=(weights + kv) * steps_per_s / 1e9,
        roofline_copy=weights * steps_per_s / 1e9 / bandwidth[0],
        roofline_read=weights * steps_per_s / 1e9 / bandwidth[1],
    )


def worker(args) -> dict:
    """Build, measure memory, time every batch size, then measure bandwidth; runs in a fresh process."""
    import torch

    from llama import Llama

    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    reset_peak_memory()
    rss0, _ = memory_kb()
    start = time.perf_counter()
    extra = {k: v for k, v in (("compile", args.compile), ("quantize", args.quantize)) if v}
    generator = Llama.build(
        args.ckpt_dir,
        args.tokenizer_path,
        max_seq_len=args.prompt_len + args.gen_len,
        max_batch_size=max(batch_sizes),
        device=args.device,
        dtype=args.dtype,
        **extra,
    )
    load_s = time.perf_counter() - start
    _, hwm_build = memory_kb()
    generator.tokenizer.stop_tokens = []  # never stop early: every run decodes exactly gen_len tokens
    start = time.perf_counter()
    time_generate(generator, max(batch_sizes), args.prompt_len, args.gen_len)  # warm-up (and compilation)
    warmup_s = time.perf_counter() - start
    _, hwm_run = memory_kb()
    device = generator.device
    bandwidth = measure_bandwidth(device, 1 << 30 if device.type == "cuda" else 512 << 20)
    rows = [measure_batch(generator, args, b, bandwidth) for b in batch_sizes]
    # The paged cache as allocated by the end of the runs (it grows with the tokens held).
    kv_cache = sum(layer.attention.cache.k.nbytes + layer.attention.cache.v.nbytes for layer in generator.model.layers)
    return dict(
        load_s=load_s,
        warmup_s=warmup_s,
        rss_build_mb=(hwm_build - rss0) / 1024,
        rss_run_mb=(hwm_run - rss0) / 1024,
        kv_cache_mb=kv_cache / 1e6,
        threads=torch.get_num_threads(),
        device=str(device),
        dtype=str(generator.model.tok_embeddings.weight.dtype).replace("torch.", ""),
        cuda_peak_mb=torch.cuda.max_memory_allocated() / 1e6 if device.type == "cuda" else None,
        copy_gb_s=bandwidth[0],
        read_gb_s=bandwidth[1],
        rows=rows,
    )


def machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} x{os.cpu_count()}{gpu}, torch {torch.__version__}"


def print_report(args, ckpt_bytes: int, r: dict) -> None:
    mb = ckpt_bytes / 1e6
    print(f"machine: {machine()}")
    print(
        f"checkpoint: {args.ckpt_dir} ({mb:.0f} MB), device {r['device']}, dtype {r['dtype']}, "
        f"threads {r['threads']}, compile {args.compile}, quantize {args.quantize}"
    )
    print(f"bandwidth: copy {r['copy_gb_s']:.1f} GB/s (read+write), read-only {r['read_gb_s']:.1f} GB/s")
    print(
        f"load: {r['load_s']:.2f} s; host RSS growth: during build {r['rss_build_mb']:.0f} MB "
        f"({r['rss_build_mb'] / mb:.2f}x checkpoint), peak incl. generation {r['rss_run_mb']:.0f} MB "
        f"({r['rss_run_mb'] / mb:.2f}x; KV cache {r['kv_cache_mb']:.0f} MB); warm-up {r['warmup_s']:.1f} s"
    )
    if r["cuda_peak_mb"] is not None:
        print(f"GPU peak allocated: {r['cuda_peak_mb']:.0f} MB")
    print(f"prompt {args.prompt_len} tokens, {args.gen_len} generated, best of {args.repeats}")
    head = (
        "batch",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "(median)",
        "ms/step",
        "MB/step w+kv",
        "GB/s",
        "roofline copy",
        "roofline read",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for x in r["rows"]:
        cells = (
            x["batch"],
            f"{x['ttft_ms']:.1f}",
            f"{x['prefill_tok_s']:.0f}",
            f"{x['decode_tok_s']:.1f}",
            f"{x['decode_tok_s_median']:.1f}",
            f"{x['step_ms']:.2f}",
            f"{x['weight_mb']:.0f}+{x['kv_mb']:.0f}",
            f"{x['achieved_gb_s']:.1f}",
            f"{100 * x['roofline_copy']:.0f}%",
            f"{100 * x['roofline_read']:.0f}%",
        )
        print("| " + " | ".join(map(str, cells)) + " |")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(argparse.Namespace(**json.loads(args.worker)))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.shape:
            args.ckpt_dir, tok = make_checkpoint(args, Path(args.cache_dir or tmp))
            args.tokenizer_path = args.tokenizer_path or str(tok)
        elif not args.tokenizer_path:
            sys.exit("error: --tokenizer_path is required with --ckpt_dir")
        args.ckpt_dir = str(args.ckpt_dir)
        ckpt_bytes = sum(p.stat().st_size for p in Path(args.ckpt_dir).glob("*.pth"))
        cmd = [sys.executable, __file__, "--ckpt_dir", args.ckpt_dir, "--worker", json.dumps(vars(args))]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"error: the measuring process failed (exit {proc.returncode})")
        result = json.loads(lines[-1][len("RESULT ") :])
    print_report(args, ckpt_bytes, result)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(args=vars(args), machine=machine(), **result), indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the checkout this script is in
    main()
