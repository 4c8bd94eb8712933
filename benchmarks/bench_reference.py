"""Decode speed of this project against the reference's decode loop, float32, one process, CPU.

The reference side is llama/testing/reference.py: an independent restatement of Meta's
`meta-llama/llama` math and loop (`llama/model.py`, `llama/generation.py`) with plain tensors,
whose matmuls (x @ W.T), cache and loop do what the reference's do on one process; Meta's own
code needs fairscale's model-parallel layers and CUDA/NCCL, so it does not run here as shipped.
Both read the same one-shard Meta checkpoint; each generates `--gen_len` tokens greedily from the
same prompt, and the decode rate is (gen_len - 1) tokens over the time after the first token
(time to first token measured separately, by generating one token). Runs alternate.

    python benchmarks/bench_reference.py --ckpt_dir CACHE/cpu-330M-12L-float32 --tokenizer_path CACHE/tokenizer.model
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the checkout this script is in
from llama import Llama  # noqa: E402
from llama.model import ModelArgs  # noqa: E402
from llama.testing.reference import RefModel, ref_generate  # noqa: E402
from llama.weights.meta import find_shards, load_shard  # noqa: E402
from llama.weights.params_json import read_params_json  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt_dir", required=True, help="a one-shard Meta checkpoint (params.json, consolidated.00.pth)")
    p.add_argument("--tokenizer_path", required=True)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    max_seq_len = a.prompt_len + a.gen_len
    ours = Llama.build(a.ckpt_dir, a.tokenizer_path, max_seq_len, 1, device="cpu", dtype="float32")
    vocab = ours.model.params.vocab_size
    prompt = [list(torch.randint(3, vocab, (a.prompt_len,), generator=torch.Generator().manual_seed(0)).tolist())]
    params = read_params_json(a.ckpt_dir)
    (shard,) = find_shards(a.ckpt_dir)
    state = load_shard(shard)
    args = ModelArgs(**{**params, "vocab_size": vocab}, max_batch_size=1, max_seq_len=max_seq_len)

    def reference(n: int):
        with torch.inference_mode():
            model = RefModel(state, args, 1, max_seq_len)
            return ref_generate(model, prompt, n, max_seq_len, -1, -1)[0][0]

    def project(n: int):
        return ours.generate(prompt, n, temperature=0)[0][0]

    assert reference(8) == project(8), "the two loops disagree on greedy tokens"
    rates = {"reference": [], "this project": []}
    for _ in range(a.rounds):
        for name, run in (("reference", reference), ("this project", project)):
            first = timed(lambda run=run: run(1))
            total = timed(lambda run=run: run(a.gen_len))
            rates[name].append((a.gen_len - 1) / (total - first))
    print(f"{a.ckpt_dir}: prompt {a.prompt_len}, {a.gen_len} generated, {a.threads} threads, greedy tokens equal")
    for name, r in rates.items():
        print(f"{name:>13}: decode {max(r):.1f} tok/s (median {statistics.median(r):.1f}) over {a.rounds} rounds")
    print(f"ratio (best / best): {max(rates['this project']) / max(rates['reference']):.2f}x")


if __name__ == "__main__":
    main()
