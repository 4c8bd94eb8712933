"""Weight bandwidth of the one-row matmuls (decode at batch 1) on the CPU, in GB/s of weight bytes.

One out x in matrix (default 11008 x 4096, Llama 2 7B's w1) in every format, copied until the
copies outgrow the last-level cache (--total_mb), and multiplied by one row, cycling through the
copies, so that every weight byte comes from DRAM as in a real decode step:

    python benchmarks/bench_kernels.py --threads 2
    python benchmarks/bench_kernels.py --threads 1   # the per-core rate

float32 runs llama.kernels.linear (MKL or oneDNN by CPU vendor); bfloat16, int8 and int4 the
native kernels of llama.native (or torch's where those are unavailable). Rounds alternate the
formats, so that a shared host's slow phases hit all of them.
"""

import argparse
import time

import torch

from llama.kernels import dense as kernels
from llama.kernels import formats as quant_formats
from llama.kernels import native, repack
from llama.kernels.formats import quantize_int8


def formats(out_features: int, in_features: int):
    """name -> (one-row matmul of x against a weight, the weight's tensors, bytes per copy)."""
    w = torch.randn(out_features, in_features)
    packed, scales = quant_formats.quantize_int4(w, 32)
    q, s = quantize_int8(w)
    s = s.float()
    return {
        "float32": (lambda x, t: kernels.linear(x, t[0]), [w]),
        "bfloat16": (lambda x, t: kernels.linear(x.bfloat16(), t[0]), [w.bfloat16()]),
        "int8": (
            lambda x, t: native.linear_int8_blocks(x, t[0], t[1], out_features),
            [repack.int8_blocks(q), repack.pad_rows(s)],
        ),
        "int4": (lambda x, t: native.linear_int4_blocks(x, t[0], out_features), [repack.int4_blocks(packed, scales)]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out_features", type=int, default=11008)
    p.add_argument("--in_features", type=int, default=4096)
    p.add_argument("--total_mb", type=int, default=1200, help="bytes of copies per format (beyond the L3)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if not native.available():
        raise SystemExit("error: the native kernels are not available here (see the log); nothing to measure")
    torch.set_num_threads(args.threads)
    x = torch.randn(1, args.in_features)
    runs = {}
    for name, (fn, tensors) in formats(args.out_features, args.in_features).items():
        size = sum(t.numel() * t.element_size() for t in tensors)
        copies = max(2, args.total_mb * 2**20 // size)
        runs[name] = (fn, [[t.clone() for t in tensors] for _ in range(copies)], size)
    print(f"{args.out_features} x {args.in_features}, one row, {args.threads} threads, GB/s of weight bytes")
    with torch.inference_mode():
        for r in range(args.rounds):
            line = []
            for name, (fn, copies, size) in runs.items():
                fn(x, copies[0])
                start = time.perf_counter()
                for tensors in copies:
                    fn(x, tensors)
                elapsed = time.perf_counter() - start
                line.append(f"{name} {len(copies) * size / elapsed / 1e9:5.1f}")
            print(f"round {r + 1}: " + ", ".join(line))


if __name__ == "__main__":
    main()
