"""One top-p draw over a large vocabulary: the reference's sample_top_p (a full sort) against the
engine's Sampler (the most likely tokens taken a few at a time with torch.topk).

    python benchmarks/bench_sampling.py                      # 128,256 and 32,000 words, 1 thread
    python benchmarks/bench_sampling.py --vocab 128256 --draws 500 --threads 2

Each draw starts from one row of float32 logits and ends with a token: softmax(logits / T) and the
nucleus cut are inside both timings. Logits are "realistic" in two ways: `zipf` (a token's logit
falls with the log of its rank, plus noise, as language models' next-token distributions roughly
do) and `randn` (scaled Gaussian noise). Printed: the median of many draws, in microseconds.
"""

import argparse
import statistics
import time
from functools import partial

import torch

from llama.decoding.sampler import Sampler, SamplingParams
from llama.decoding.sampling import sample_top_p


def zipf_logits(vocab: int, generator: torch.Generator) -> torch.Tensor:
    """logit = -log(rank) + noise, over a random permutation of the vocabulary (at T 0.6: p ~ rank^-1.7)."""
    ranks = torch.arange(1, vocab + 1, dtype=torch.float32)
    logits = -torch.log(ranks) + 0.5 * torch.randn(vocab, generator=generator)
    return logits[torch.randperm(vocab, generator=generator)]


def randn_logits(vocab: int, generator: torch.Generator) -> torch.Tensor:
    return 4.0 * torch.randn(vocab, generator=generator)


def nucleus_size(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    probs = torch.softmax(logits / temperature, dim=-1).sort(descending=True).values
    return int(((torch.cumsum(probs, -1) - probs) <= top_p).sum())


def reference_draw(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """What Llama.generate does for one step (llama.decoding.sampling.sample_next)."""
    return sample_top_p(torch.softmax(logits / temperature, dim=-1), top_p)


def median_us(fn, draws: int) -> float:
    for _ in range(5):  # warm-up
        fn()
    times = []
    for _ in range(draws):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, nargs="+", default=[128256, 32000])
    p.add_argument("--draws", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top_p", type=float, default=0.9)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    sampler = Sampler(SamplingParams(args.temperature, args.top_p, seed=0), prompt=[])
    print(f"threads={args.threads} temperature={args.temperature} top_p={args.top_p} draws={args.draws} (median)")
    print(f"{'vocab':>7} {'logits':>6} {'nucleus':>7} {'sample_top_p us':>15} {'Sampler us':>10} {'speed-up':>8}")
    for vocab in args.vocab:
        for name, make in (("zipf", zipf_logits), ("randn", randn_logits)):
            logits = make(vocab, generator)
            ref = median_us(partial(reference_draw, logits[None], args.temperature, args.top_p), args.draws)
            eng = median_us(partial(sampler.choose, logits), args.draws)
            size = nucleus_size(logits, args.temperature, args.top_p)
            print(f"{vocab:>7} {name:>6} {size:>7} {ref:>15.0f} {eng:>10.0f} {ref / eng:>7.1f}x")


if __name__ == "__main__":
    main()
