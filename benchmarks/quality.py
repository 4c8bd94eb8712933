"""How far bfloat16, int8 and int4 (weights, or the KV cache: --kv_cache_dtype) move the model from
float32: mean |delta log p|, greedy agreement, and the bundled demo model's held-out nats per character.

    python benchmarks/quality.py              # the test checkpoints (llama.synthetic's tiny configs) and the demo
    python benchmarks/quality.py --cpu-330M   # also the benchmark's 12-layer, dim-768 random model

For each prompt the float32 model generates greedily (prompt + gen_len tokens); both models then
score that same sequence, and the script reports the mean and max absolute difference of the
per-token log-probabilities, and how many greedy tokens the other model reproduces on its own.
For the demo it also scores tests/data/heldout_programming.txt (llama.likelihood.nats_per_char,
one text per line; higher is better).
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The quick brown fox", "Python is a programming language that", "A", "Once upon a time, in a land"]
HELDOUT = ROOT / "tests" / "data" / "heldout_programming.txt"
VARIANTS = {
    "bfloat16": dict(dtype="bfloat16"),
    "int8": dict(quantize="int8"),
    "int4": dict(quantize="int4"),
    "KV cache bfloat16": dict(kv_cache_dtype="bfloat16"),  # float32 weights, the cache stored in bfloat16
    "KV cache int8": dict(kv_cache_dtype="int8"),
    "int4, KV cache int8": dict(quantize="int4", kv_cache_dtype="int8"),
}


def build(ckpt: Path, tokenizer: Path, **kw):
    from llama import Llama

    kw = {"dtype": "float32", **kw}
    return Llama.build(str(ckpt), str(tokenizer), 512, len(PROMPTS), device="cpu", **kw)


def compare(plain, other, gen_len: int):
    import torch

    prompts = [plain.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    plain.tokenizer.stop_tokens = other.tokenizer.stop_tokens = []  # compare full-length generations
    tokens, _ = plain.generate(prompts, gen_len, temperature=0, echo=True)
    o_tokens, _ = other.generate(prompts, gen_len, temperature=0, echo=True)
    diffs = []
    for row in tokens:
        x = torch.tensor([row])
        lp = [
            torch.log_softmax(m.model.forward(x, 0)[0, :-1].float(), -1).gather(-1, x[0, 1:, None])
            for m in (plain, other)
        ]
        diffs.append((lp[0] - lp[1]).abs().flatten())
    diffs = torch.cat(diffs)
    generated = [(r[len(p) :], s[len(p) :]) for r, s, p in zip(tokens, o_tokens, prompts)]
    same = sum(a == b for r, s in generated for a, b in zip(r, s))
    return diffs.mean().item(), diffs.max().item(), same, sum(len(r) for r, _ in generated)


def report(name: str, shards: int, ckpt: Path, tok: Path, gen_len: int, heldout: bool = False) -> None:
    from llama.testing.likelihood import nats_per_char

    plain = build(ckpt, tok)
    texts = HELDOUT.read_text().splitlines()
    base = f"{nats_per_char(plain, texts):.4f}" if heldout else ""
    for variant, kw in VARIANTS.items():
        other = build(ckpt, tok, **kw)
        mean, worst, same, total = compare(plain, other, gen_len)
        nats = f"{base} -> {nats_per_char(other, texts):.4f}" if heldout else ""
        print(f"| {name} | {shards} | {variant} | {mean:.4f} | {worst:.4f} | {same}/{total} | {nats} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gen_len", type=int, default=16)
    p.add_argument("--cpu-330M", dest="cpu330", action="store_true")
    p.add_argument("--demo_only", action="store_true", help="only the bundled demo model")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

    from llama import demo
    from llama.testing.synthetic import params_dict, random_state, tiny_args, train_sentencepiece
    from llama.weights.meta import save_checkpoint

    print(
        "| model | shards | vs float32 | mean abs dlogp | max abs dlogp | greedy tokens equal "
        "| held-out nats/char (float32 -> this) |"
    )
    print("|---|---|---|---|---|---|---|")
    report("bundled demo (trained)", 1, demo.CKPT_DIR, demo.TOKENIZER_PATH, args.gen_len, heldout=True)
    if args.demo_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = tmp / "tokenizer.model"
        tok.write_bytes(train_sentencepiece())
        for name in ("mha", "gqa"):  # the tiny Llama 2 configs of llama.synthetic (the SentencePiece ones)
            for shards in (1, 2):
                ckpt = save_checkpoint(
                    random_state(tiny_args(name)), params_dict(tiny_args(name)), tmp / f"{name}{shards}", shards
                )
                report(f"test {name} (random)", shards, ckpt, tok, args.gen_len)
        if args.cpu330:
            from bench_generate import make_checkpoint, parse_args

            ckpt, tok = make_checkpoint(parse_args(["--shape", "cpu-330M"]), tmp / "cpu-330M")
            report("cpu-330M (random)", 1, ckpt, tok, args.gen_len)


if __name__ == "__main__":
    main()
