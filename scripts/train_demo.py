"""Train the bundled demo model (llama/demo/) on CPU: `python scripts/train_demo.py [--out llama/demo]`.

A small Llama 2 (llama.model.Transformer itself, the same class that serves Meta's weights) and
its own SentencePiece tokenizer, trained on the English programming text of demo_corpus.py.
Seeded: the same Python (its docs are the data), torch, thread count and flags give the same weights.
The run that produced the committed files is recorded in llama/demo/TRAINING.md.
"""

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import demo_corpus  # noqa: E402

from llama.chat_format import B_INST, E_INST, fold_system  # noqa: E402
from llama.generation import Llama  # noqa: E402
from llama.model import ModelArgs, Transformer  # noqa: E402
from llama.testing.likelihood import nats_per_char  # noqa: E402
from llama.testing.synthetic import train_sentencepiece  # noqa: E402
from llama.weights.meta import save_checkpoint  # noqa: E402

logger = logging.getLogger("train_demo")
REPO = Path(__file__).resolve().parents[1]
MODEL = dict(dim=192, n_layers=4, n_heads=6, multiple_of=32, norm_eps=1e-5)
VALID_EVERY = 50  # every 50th document is kept out of training to watch for overfitting


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "llama" / "demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight_decay", type=float, default=0.1)
    # One thread by default: where the 2 cores are shared with other jobs, two OpenMP threads
    # spin-wait for each other and a step takes several times longer.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--heldout", default=str(REPO / "tests" / "data" / "heldout_programming.txt"))
    return p.parse_args(argv)


def train_tokenizer(docs, vocab_size: int) -> bytes:
    """A Llama-style SentencePiece BPE model (llama.testing.synthetic's trainer) that keeps text as written:
    digits split, whitespace-only pieces, no normalisation, every sentence."""
    lines = (line for doc in docs for line in doc.splitlines() if line.strip())
    return train_sentencepiece(
        lines,
        vocab_size,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        max_sentence_length=16384,
        input_sentence_size=0,
        num_threads=1,
    )


def encode_dialog_with_answer(sp, dialog) -> list:
    """Every (user, assistant) pair as `bos [INST] user [/INST] answer eos`, as chat_format lays them out."""
    dialog = fold_system(dialog)
    ids = []
    for user, answer in zip(dialog[::2], dialog[1::2]):
        text = f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [sp.bos_id()] + sp.encode(text) + [sp.eos_id()]
    return ids


def token_streams(sp, seed: int):
    """-> (train ids, valid ids): documents and dialogs, each `bos ... eos`, interleaved in a seeded order."""
    pieces = [[sp.bos_id()] + sp.encode(doc) + [sp.eos_id()] for doc in demo_corpus.documents()]
    pieces += [encode_dialog_with_answer(sp, d) for d in demo_corpus.dialogs(seed)]
    valid = [p for i, p in enumerate(pieces) if i % VALID_EVERY == 0]
    train = [p for i, p in enumerate(pieces) if i % VALID_EVERY != 0]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    flat = lambda ps: torch.tensor([t for p in ps for t in p], dtype=torch.long)  # noqa: E731
    return flat([train[i] for i in order]), flat(valid)


def build_model(vocab_size: int, seq_len: int, seed: int) -> Transformer:
    """llama.model.Transformer itself, with GPT-2-style init: no process group, no cache."""
    torch.manual_seed(seed)
    args = ModelArgs(vocab_size=vocab_size, max_seq_len=seq_len, max_batch_size=1, **MODEL)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:  # residual-branch outputs get smaller weights so the stream starts near identity
                std = 0.02 / math.sqrt(2 * args.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 0.02
                p.normal_(0.0, std)
    return model


def batch(ids: torch.Tensor, batch_size: int, seq_len: int, g: torch.Generator):
    starts = torch.randint(0, len(ids) - seq_len - 1, (batch_size,), generator=g)
    x = torch.stack([ids[s : s + seq_len + 1] for s in starts.tolist()])
    return x[:, :-1], x[:, 1:]


def lr_at(step: int, args) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model, ids: torch.Tensor, seq_len: int, max_windows: int = 16) -> float:
    n = min(max_windows, (len(ids) - 1) // seq_len)
    x = ids[: n * seq_len + 1]
    inputs, targets = x[:-1].view(n, seq_len), x[1:].view(n, seq_len)
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


@torch.no_grad()
def training_nats_per_char(model, sp, paragraphs) -> float:
    """Sum of log p(token | earlier tokens) over each `bos paragraph`, divided by the characters."""
    total = 0.0
    for text in paragraphs:
        ids = torch.tensor([[sp.bos_id()] + sp.encode(text)])
        logits = model(ids[:, :-1])
        total -= F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    return total / sum(len(t) for t in paragraphs)


def evaluate(model, sp, valid_ids, heldout, args) -> dict:
    model.eval()
    out = {"valid_loss": mean_loss(model, valid_ids, args.seq_len)}
    if heldout:
        out["heldout_nats_per_char"] = training_nats_per_char(model, sp, heldout)
    model.train()
    return out


def train(model, sp, train_ids, valid_ids, heldout, args) -> dict:
    decay = [p for n, p in model.named_parameters() if not n.endswith("norm.weight")]
    keep = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": keep, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    g = torch.Generator().manual_seed(args.seed)
    start, smooth = time.time(), None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        x, y = batch(train_ids, args.batch_size, args.seq_len, g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if smooth is None else 0.9 * smooth + 0.1 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.time() - start
            tok_s = (step + 1) * args.batch_size * args.seq_len / elapsed
            logger.info("step %d/%d  loss %.3f  %.0f s  %.0f tok/s", step + 1, args.steps, smooth, elapsed, tok_s)
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            logger.info("step %d: %s", step + 1, _fmt(evaluate(model, sp, valid_ids, heldout, args)))
    stats = {"train_loss": smooth, "train_seconds": time.time() - start}
    return {**stats, **evaluate(model, sp, valid_ids, heldout, args)}


def _fmt(stats: dict) -> str:
    return json.dumps({k: round(v, 3) for k, v in stats.items()})


def save(model, tokenizer_bytes: bytes, out: Path) -> None:
    """Meta layout, weights in float16 to stay small (loading casts them to the runtime dtype)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    params = {**MODEL, "vocab_size": -1}
    save_checkpoint(state, params, out, n_shards=1)
    (out / "tokenizer.model").write_bytes(tokenizer_bytes)


def score_saved(out: Path, heldout) -> float:
    """The held-out score of the files as shipped (float16 weights), through the public API."""
    generator = Llama.build(
        str(out), str(out / "tokenizer.model"), max_seq_len=256, max_batch_size=4, device="cpu", dtype="float32"
    )
    return nats_per_char(generator, heldout)


def write_record(out: Path, args, stats: dict, argv) -> None:
    """TRAINING.md next to the weights: how they were made and how well they do."""
    lines = [
        "# How the demo model was trained",
        "",
        f"Command: `{' '.join(['python scripts/train_demo.py', *argv])}`",
        "",
        f"- model: {json.dumps(MODEL)}, vocab {args.vocab_size}, {stats.pop('parameters')} parameters",
        f"- data: pydoc_data topics + standard-library docstrings and comments of Python "
        f"{platform.python_version()}, plus question/answer dialogs made from them "
        f"({stats.pop('train_tokens')} training tokens; every {VALID_EVERY}th document held out as valid)",
        f"- training: {args.steps} steps of {args.batch_size} x {args.seq_len} tokens, AdamW lr {args.lr} "
        f"(warmup {args.warmup}, cosine to lr/10), weight decay {args.weight_decay}, seed {args.seed}, "
        f"{args.threads} thread(s), torch {torch.__version__}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs while training)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in stats.items()]
    (out / "TRAINING.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    tok_bytes = train_tokenizer(demo_corpus.documents(), args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=tok_bytes)
    train_ids, valid_ids = token_streams(sp, args.seed)
    logger.info(
        "tokenizer and data: %.0f s; %d train / %d valid tokens", time.time() - t0, len(train_ids), len(valid_ids)
    )
    model = build_model(sp.vocab_size(), args.seq_len, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %.2fM parameters", n_params / 1e6)
    heldout = Path(args.heldout).read_text().splitlines() if Path(args.heldout).is_file() else []
    stats = train(model, sp, train_ids, valid_ids, heldout, args)
    out = Path(args.out)
    save(model, tok_bytes, out)
    stats["total_seconds"] = time.time() - t0
    if heldout:
        stats["heldout_nats_per_char_float16"] = score_saved(out, heldout)
    logger.info("done: %s", _fmt(stats))
    write_record(out, args, {"parameters": n_params, "train_tokens": len(train_ids), **stats}, argv)
    logger.info("saved to %s", out)


if __name__ == "__main__":
    main()
