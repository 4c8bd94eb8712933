"""Hugging Face Llama directories: config.json <-> params.json, tensor names, the q/k row order.

A Hugging Face directory holds `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). Its weights are Meta's under other names, except that q and k
rows are ordered for rotating halves of each head where Meta's `llama/model.py` (meta-llama/llama)
rotates adjacent pairs: Meta row 2i of a head is HF row i, Meta row 2i+1 is HF row i + head_dim/2.
Which file holds which tensor, and the memory-mapped reads, live in `hf_files.py`; config.json <->
params.json in `hf_config.py`.
"""

from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from ..errors import CheckpointError, ConfigError, MissingFileError
from .hf_config import CONFIG, config_from_params, ffn_hidden_dim, tie_word_embeddings
from .hf_files import INDEX_FILE, SINGLE_FILE, TensorFiles, check_rank

TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Buffers some older conversions saved; the model recomputes them.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
META_IGNORED_KEYS = ("rope.freqs",)


def is_hf_dir(path) -> bool:
    """config.json plus model.safetensors or model.safetensors.index.json."""
    path = Path(path)
    return (path / CONFIG).is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def checkpoint_layout(path) -> str:
    """'hf' or 'meta' for a checkpoint directory; MissingFileError naming both layouts otherwise."""
    path = Path(path)
    if is_hf_dir(path):
        return "hf"
    if (path / "params.json").is_file() and any(path.glob("*.pth")):
        return "meta"
    what = "not found" if not path.exists() else "is not a directory" if not path.is_dir() else "holds neither layout"
    raise MissingFileError(
        f"checkpoint directory {str(path)!r} {what}: expected a Hugging Face directory ({CONFIG} + {SINGLE_FILE} "
        f"or {INDEX_FILE}) or a Meta one (params.json + consolidated.*.pth)"
    )


def meta_shapes(params: dict, vocab_size: int) -> Dict[str, Tuple[int, ...]]:
    """Every weight Meta's model has, in Meta's state-dict order, with its full shape."""
    dim, n_heads = params["dim"], params["n_heads"]
    head_dim, kv = dim // n_heads, params.get("n_kv_heads") or n_heads
    hidden = ffn_hidden_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    layer = {
        "attention.wq": (n_heads * head_dim, dim),
        "attention.wk": (kv * head_dim, dim),
        "attention.wv": (kv * head_dim, dim),
        "attention.wo": (dim, n_heads * head_dim),
        "feed_forward.w1": (hidden, dim),
        "feed_forward.w2": (dim, hidden),
        "feed_forward.w3": (hidden, dim),
        "attention_norm": (dim,),
        "ffn_norm": (dim,),
    }
    shapes: Dict[str, Tuple[int, ...]] = {"tok_embeddings.weight": (vocab_size, dim)}
    for i in range(params["n_layers"]):
        shapes.update({f"layers.{i}.{name}.weight": shape for name, shape in layer.items()})
    shapes["norm.weight"] = (dim,)
    shapes["output.weight"] = (vocab_size, dim)
    return shapes


def hf_name(meta_key: str) -> str:
    """Meta key -> Hugging Face name: layers.3.attention.wq.weight -> model.layers.3.self_attn.q_proj.weight."""
    parts = meta_key.split(".")
    if parts[0] == "layers":
        return f"model.layers.{parts[1]}.{LAYER_NAMES['.'.join(parts[2:-1])]}.{parts[-1]}"
    return f"{TOP_NAMES[parts[0]]}.{parts[-1]}"


def rotary_heads(meta_key: str, params: dict) -> Optional[int]:
    """How many heads' rows a q/k weight holds (their rows are reordered between layouts); None otherwise."""
    if meta_key.endswith("attention.wq.weight"):
        return params["n_heads"]
    if meta_key.endswith("attention.wk.weight"):
        return params.get("n_kv_heads") or params["n_heads"]
    return None


def rows_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF q/k rows (halves of each head) -> Meta's (adjacent pairs); dim 0 holds `n_heads` whole heads."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rows_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of rows_to_meta."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def to_hf(state: Dict[str, torch.Tensor], params: dict) -> Tuple[Dict[str, torch.Tensor], dict]:
    """A full Meta state dict + params.json -> (Hugging Face tensors, config.json dict).

    The output layer is tied to the embedding (no lm_head.weight) exactly when the two are equal.
    """
    known = set(meta_shapes(params, 1)) | set(META_IGNORED_KEYS)
    unknown = sorted(set(state) - known)
    if unknown:
        raise CheckpointError(f"unexpected weights {unknown[:5]} for params.json (n_layers={params['n_layers']})")
    embedding = state["tok_embeddings.weight"]
    tied = state["output.weight"].shape == embedding.shape and torch.equal(state["output.weight"], embedding)
    tensors = {}
    for key in meta_shapes(params, embedding.shape[0]):
        if key == "output.weight" and tied:
            continue
        heads = rotary_heads(key, params)
        tensors[hf_name(key)] = rows_to_hf(state[key], heads) if heads else state[key]
    return tensors, config_from_params(params, embedding.shape[0], tied, embedding.dtype)


def load_rank_state(
    ckpt_dir, params: dict, split_dim: Callable[[str], Optional[int]], world: int, rank: int
) -> Dict[str, torch.Tensor]:
    """The weights of model-parallel `rank` of `world`, in Meta names and Meta's q/k row order.

    `params` is hf_config.params_from_hf_dir(ckpt_dir); `split_dim(meta_key)` gives the dim each weight is cut
    along (None: every rank gets all of it). Each rank reads only its own slice of each tensor;
    tensors that need no reordering are views of the memory-mapped files. Every name and shape
    is checked before any weight is read.
    """
    check_rank(world, rank)
    ckpt_dir = Path(ckpt_dir)
    tied = tie_word_embeddings(ckpt_dir)
    with TensorFiles(ckpt_dir) as files:
        shapes = meta_shapes(params, params["vocab_size"])
        _check_tensors(files, {hf_name(k): s for k, s in shapes.items() if not (tied and k == "output.weight")}, tied)
        state = {}
        for key, shape in shapes.items():
            name = hf_name("tok_embeddings.weight" if tied and key == "output.weight" else key)
            state[key] = _read_slice(files, name, key, shape, params, split_dim(key), world, rank)
        return state


def _check_tensors(files: TensorFiles, expected: Dict[str, Tuple[int, ...]], tied: bool) -> None:
    for name, path in files.where.items():
        allowed = tied and name == "lm_head.weight"  # transformers ignores a stored copy when tied
        if name not in expected and not allowed and not name.endswith(IGNORED_SUFFIXES):
            raise CheckpointError(
                f"{str(path)!r} holds tensor {name!r}, which is not part of a Llama model of this {CONFIG}; "
                "only unmodified Llama checkpoints (LlamaForCausalLM) can be loaded"
            )
    missing = sorted(set(expected) - set(files.where))
    if missing:
        raise CheckpointError(
            f"{str(files.ckpt_dir)!r} lacks tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} that its "
            f"{CONFIG} implies; the download is incomplete or {CONFIG} belongs to another model"
        )
    for name, shape in expected.items():
        got = files.shape(name)
        if got != tuple(shape):
            raise CheckpointError(
                f"{str(files.where[name])!r}: tensor {name!r} has shape {list(got)} but {CONFIG} implies "
                f"{list(shape)}; does {CONFIG} belong to these weights?"
            )


def _read_slice(
    files: TensorFiles, name: str, key: str, shape, params: dict, dim: Optional[int], world: int, rank: int
) -> torch.Tensor:
    index = [slice(None)] * len(shape)
    heads = rotary_heads(key, params)
    if dim is not None and world > 1:
        whole = heads if heads and dim == 0 else shape[dim]  # q/k rows are reordered within whole heads
        if whole % world:
            what = f"{whole} heads" if heads and dim == 0 else f"size {shape[dim]} along dim {dim}"
            raise ConfigError(f"{key} has {what}, which cannot be split across {world} model-parallel processes")
        if heads and dim == 0:
            heads //= world
        part = shape[dim] // world
        index[dim] = slice(rank * part, (rank + 1) * part)
    if heads:  # q/k: rearranged into Meta's row order, in memory of their own
        rows = index[0] if isinstance(index[0], slice) and index[0] != slice(None) else slice(0, shape[0])
        tensor = rows_to_meta(files.read_rows(name, rows.start, rows.stop), heads)
    else:
        tensor = files.read(name, tuple(index))
    return tensor.contiguous()
