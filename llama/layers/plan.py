"""THE parallel plan: how each weight of a Llama model is split across model-parallel ranks.

A plan maps a module's name (the last component: `wq`, `tok_embeddings`, ...) to how its weight is
split. `llama.layers.parallel.parallelize` swaps in the layers that hold a rank's slice, and the
checkpoint code (llama.weights) splits and merges shards with the same table (`split_dim`). Llama 3
differs from Llama 2 in one line: its embedding is split along the vocabulary (Meta's
`meta-llama/llama3` `llama/model.py` uses VocabParallelEmbedding there). Pure data: the offline tools
read it without importing fairscale or any kernel.
"""

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from ..errors import CheckpointError


@dataclass(frozen=True)
class Style:
    """How one weight is split: `dim` of the weight that is cut into `world` equal slices (None: replicated)."""

    kind: str
    dim: Optional[int]
    gather_output: bool = False  # column layers: gather the full output on every rank


COLUMN = Style("column", 0)  # y = x W^T with W's output features split; output stays split
COLUMN_GATHERED = Style("column", 0, gather_output=True)  # ... and gathered (the logits)
ROW = Style("row", 1)  # input features split; partial products all-reduced
EMBEDDING_DIM = Style("embedding_dim", 1)  # embedding vectors split; slices gathered
VOCAB = Style("vocab", 0)  # vocabulary rows split; lookups masked and all-reduced
REPLICATED = Style("replicated", None)

Plan = Mapping[str, Style]

LLAMA2_PLAN: Plan = {
    "tok_embeddings": EMBEDDING_DIM,
    "wq": COLUMN,
    "wk": COLUMN,
    "wv": COLUMN,
    "wo": ROW,
    "w1": COLUMN,
    "w3": COLUMN,
    "w2": ROW,
    "output": COLUMN_GATHERED,
    "attention_norm": REPLICATED,
    "ffn_norm": REPLICATED,
    "norm": REPLICATED,
}
LLAMA3_PLAN: Plan = {**LLAMA2_PLAN, "tok_embeddings": VOCAB}
PLANS: Dict[str, Plan] = {"llama2": LLAMA2_PLAN, "llama3": LLAMA3_PLAN}


def split_dim(plan: Plan, key: str) -> Optional[int]:
    """The dim along which state-dict entry `key` (e.g. `layers.3.attention.wq.weight`) is split."""
    parts = key.split(".")
    owner = parts[-2] if len(parts) >= 2 else parts[0]
    if owner not in plan:
        raise CheckpointError(
            f"unexpected weight {key!r} in checkpoint: not part of the Llama architecture "
            f"(known modules: {sorted(plan)}); use an unmodified checkpoint"
        )
    return plan[owner].dim


# The modules whose weights are matmul weights (quantized by llama.layers.quantized), the same in both plans.
LINEAR_OWNERS = frozenset(name for name, style in LLAMA2_PLAN.items() if style.kind in ("column", "row"))
