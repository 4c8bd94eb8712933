"""Made-up models for tests, benchmarks and the demo trainer (no downloads needed): one table of tiny
configs, one SentencePiece trainer, random weights in Meta's layout."""

import io
import math
from typing import Dict, Iterable, Optional

import torch

from ..model import ModelArgs

TINY_VOCAB = 512  # the SentencePiece vocabulary the tiny Llama 2 configs are tested with
LLAMA3_VOCAB = 128256  # Meta's Llama 3 tokenizer: 128000 BPE ranks + 256 special tokens

# name -> ModelArgs fields (vocab_size, where missing, is TINY_VOCAB's tokenizer).
TINY_CONFIGS: Dict[str, dict] = {
    # multi-head attention, plain SwiGLU width
    "mha": dict(dim=64, n_layers=2, n_heads=4, multiple_of=32, norm_eps=1e-5),
    # grouped-query attention (4 query heads per kv head), ffn_dim_multiplier, custom rope_theta
    "gqa": dict(
        dim=64,
        n_layers=2,
        n_heads=8,
        n_kv_heads=2,
        multiple_of=32,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
    ),
    # Llama 3 shapes: its vocabulary (vocab-split embedding), GQA, rope_theta 500000; 3.1+ scales RoPE
    "llama3": dict(
        dim=64,
        n_layers=2,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=LLAMA3_VOCAB,
        multiple_of=32,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
    ),
    "llama3.1": dict(
        dim=64,
        n_layers=2,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=LLAMA3_VOCAB,
        multiple_of=32,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
        use_scaled_rope=True,
    ),
}


def tiny_args(name: str, **overrides) -> ModelArgs:
    return ModelArgs(**{"vocab_size": TINY_VOCAB, **TINY_CONFIGS[name], **overrides})


def python_doc_lines(min_len: int = 20) -> Iterable[str]:
    """English prose that ships with Python: the lines of the pydoc topic pages."""
    from pydoc_data.topics import topics

    for text in topics.values():
        for line in text.splitlines():
            line = line.strip()
            if len(line) > min_len:
                yield line


def train_sentencepiece(lines: Optional[Iterable[str]] = None, vocab_size: int = TINY_VOCAB, **options) -> bytes:
    """A Llama-style SentencePiece BPE model (unk 0, bos 1, eos 2, no pad, byte fallback) -> its bytes.

    lines default to Python's own docs; options go to SentencePieceTrainer.train (they override).
    """
    import sentencepiece as spm

    out = io.BytesIO()
    settings = dict(
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        input_sentence_size=20000,
        shuffle_input_sentence=False,
        minloglevel=2,
        character_coverage=0.9995,
        num_threads=2,
    )
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(python_doc_lines() if lines is None else lines),
        model_writer=out,
        vocab_size=vocab_size,
        **{**settings, **options},
    )
    return out.getvalue()


def random_state(args: ModelArgs, seed: int = 0, dtype=torch.float32) -> Dict[str, torch.Tensor]:
    """A full (unsharded) state dict for `args`, scaled so that logits are well spread.

    Includes `rope.freqs`, which real Meta checkpoints carry and loaders must ignore.
    """
    g = torch.Generator().manual_seed(seed)

    def w(rows: int, cols: int, gain: float = 1.0) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=g) * gain / math.sqrt(cols)).to(dtype)

    def norm(dim: int) -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(dim, generator=g)).to(dtype)

    dim, hd, kv = args.dim, args.head_dim, args.kv_heads
    hidden = args.ffn_hidden_dim
    state = {"tok_embeddings.weight": torch.randn(args.vocab_size, dim, generator=g).to(dtype)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        state[p + "attention.wq.weight"] = w(args.n_heads * hd, dim)
        state[p + "attention.wk.weight"] = w(kv * hd, dim)
        state[p + "attention.wv.weight"] = w(kv * hd, dim)
        state[p + "attention.wo.weight"] = w(dim, args.n_heads * hd)
        state[p + "feed_forward.w1.weight"] = w(hidden, dim)
        state[p + "feed_forward.w2.weight"] = w(dim, hidden)
        state[p + "feed_forward.w3.weight"] = w(hidden, dim)
        state[p + "attention_norm.weight"] = norm(dim)
        state[p + "ffn_norm.weight"] = norm(dim)
    state["norm.weight"] = norm(dim)
    state["output.weight"] = w(args.vocab_size, dim, gain=4.0)
    state["rope.freqs"] = torch.ones(hd // 2, dtype=dtype)
    return state


def params_dict(args: ModelArgs) -> dict:
    """params.json content for `args`, as Meta ships it: Llama 2 with vocab_size -1 (taken from the
    tokenizer), Llama 3 with its vocab_size and RoPE settings."""
    out = {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "multiple_of": args.multiple_of,
        "norm_eps": args.norm_eps,
        "vocab_size": args.vocab_size if args.vocab_size >= LLAMA3_VOCAB else -1,
    }
    if args.n_kv_heads is not None:
        out["n_kv_heads"] = args.n_kv_heads
    if args.ffn_dim_multiplier is not None:
        out["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    if args.rope_theta != 10000.0:
        out["rope_theta"] = args.rope_theta
    if args.use_scaled_rope:
        out["use_scaled_rope"] = True
    if args.rope_scaling_factor is not None:
        out["rope_scaling_factor"] = args.rope_scaling_factor
    return out
