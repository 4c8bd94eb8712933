"""Random-weight models in Meta's layout, for tests and benchmarks (no downloads needed)."""
import math
from typing import Dict

import torch

from .model import ModelArgs


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
    """params.json content for `args` (vocab_size -1: taken from the tokenizer, as Meta ships it)."""
    out = {
        "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "multiple_of": args.multiple_of, "norm_eps": args.norm_eps, "vocab_size": -1,
    }
    if args.n_kv_heads is not None:
        out["n_kv_heads"] = args.n_kv_heads
    if args.ffn_dim_multiplier is not None:
        out["ffn_dim_multiplier"] = args.ffn_dim_multiplier
    if args.rope_theta != 10000.0:
        out["rope_theta"] = args.rope_theta
    return out
