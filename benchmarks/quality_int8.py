"""How far int8 weight-only quantization moves the model: mean |delta log p| and greedy agreement.

    python benchmarks/quality_int8.py              # the test checkpoints (llama.synthetic's tiny configs) and the demo
    python benchmarks/quality_int8.py --cpu-330M   # also the benchmark's 12-layer, dim-768 random model

For each prompt the float model generates greedily (prompt + gen_len tokens); both models then
score that same sequence, and the script reports the mean and max absolute difference of the
per-token log-probabilities, and how many greedy tokens the int8 model reproduces on its own.
"""
import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The quick brown fox", "Python is a programming language that", "A", "Once upon a time, in a land"]


def compare(ckpt: Path, tokenizer: Path, gen_len: int):
    import torch

    from llama import Llama

    plain = Llama.build(str(ckpt), str(tokenizer), 128, len(PROMPTS), device="cpu", dtype="float32")
    int8 = Llama.build(str(ckpt), str(tokenizer), 128, len(PROMPTS), device="cpu", dtype="float32", quantize="int8")
    prompts = [plain.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    plain.tokenizer.stop_tokens = int8.tokenizer.stop_tokens = []  # compare full-length generations
    tokens, _ = plain.generate(prompts, gen_len, temperature=0, echo=True)
    q_tokens, _ = int8.generate(prompts, gen_len, temperature=0, echo=True)
    diffs = []
    for row in tokens:
        x = torch.tensor([row])
        lp = [torch.log_softmax(m.model.forward(x, 0)[0, :-1], -1).gather(-1, x[0, 1:, None]) for m in (plain, int8)]
        diffs.append((lp[0] - lp[1]).abs().flatten())
    diffs = torch.cat(diffs)
    generated = [(r[len(p):], s[len(p):]) for r, s, p in zip(tokens, q_tokens, prompts)]
    same = sum(a == b for r, s in generated for a, b in zip(r, s))
    return diffs.mean().item(), diffs.max().item(), same, sum(len(r) for r, _ in generated)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gen_len", type=int, default=16)
    p.add_argument("--cpu-330M", dest="cpu330", action="store_true")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

    from llama.checkpoint import save_checkpoint
    from llama.synthetic import params_dict, random_state, tiny_args, train_sentencepiece

    print("| model | shards | mean abs dlogp | max abs dlogp | greedy tokens equal |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = tmp / "tokenizer.model"
        tok.write_bytes(train_sentencepiece())
        for name in ("mha", "gqa"):  # the tiny Llama 2 configs of llama.synthetic (the SentencePiece ones)
            for shards in (1, 2):
                ckpt = save_checkpoint(random_state(tiny_args(name)), params_dict(tiny_args(name)), tmp / f"{name}{shards}", shards)
                mean, worst, same, total = compare(ckpt, tok, args.gen_len)
                print(f"| test {name} | {shards} | {mean:.4f} | {worst:.4f} | {same}/{total} |")
        from llama import demo

        mean, worst, same, total = compare(demo.CKPT_DIR, demo.TOKENIZER_PATH, args.gen_len)
        print(f"| bundled demo (trained) | 1 | {mean:.4f} | {worst:.4f} | {same}/{total} |")
        if args.cpu330:
            from bench_generate import make_checkpoint, parse_args

            ckpt, tok = make_checkpoint(parse_args(["--shape", "cpu-330M"]), tmp / "cpu-330M")
            mean, worst, same, total = compare(ckpt, tok, args.gen_len)
            print(f"| cpu-330M (random) | 1 | {mean:.4f} | {worst:.4f} | {same}/{total} |")


if __name__ == "__main__":
    main()
