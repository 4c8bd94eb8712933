"""Peak resident memory of a long max_seq_len before it is used: the paged KV cache's point.

    python benchmarks/bench_cache_memory.py [--kv_cache_dtype int8] [--max_seq_len 131072]

Builds the bundled demo with max_batch_size=4 at that max_seq_len, answers one 32-token prompt,
and prints the process's peak RSS after each, beside what a full float32 cache would take.
"""

import argparse
import resource

from llama import Llama


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max_seq_len", type=int, default=131072)
    p.add_argument("--max_batch_size", type=int, default=4)
    p.add_argument("--kv_cache_dtype", default=None)
    args = p.parse_args()
    kw = {"kv_cache_dtype": args.kv_cache_dtype} if args.kv_cache_dtype else {}
    g = Llama.build_demo(max_seq_len=args.max_seq_len, max_batch_size=args.max_batch_size, **kw)
    built = peak_mb()
    g.text_completion(["def fib(n):"], max_gen_len=32, temperature=0)
    run = peak_mb()
    m = g.model.params
    full = 2 * m.n_layers * args.max_batch_size * args.max_seq_len * m.kv_heads * m.head_dim * 4 / 2**20
    print(f"peak RSS after build {built:.0f} MB, after a 32-token answer {run:.0f} MB; ", end="")
    print(f"a full float32 cache: {full:.0f} MB")


if __name__ == "__main__":
    main()
