"""Hugging Face Llama directories: config.json <-> params.json, tensor names, the q/k row order.

A Hugging Face directory holds `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). Its weights are Meta's under other names, except that q and k
rows are ordered for rotating halves of each head where Meta's `llama/model.py` (meta-llama/llama)
rotates adjacent pairs: Meta row 2i of a head is HF row i, Meta row 2i+1 is HF row i + head_dim/2.
Which file holds which tensor, and the memory-mapped reads, live in `hf_files.py`.
"""
import json
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from .checkpoint import check_params
from .errors import CheckpointError, ConfigError, MissingFileError
from .hf_files import INDEX_FILE, SINGLE_FILE, TensorFiles, check_rank
from .validation import whole_number

CONFIG = "config.json"

# (multiple_of, ffn_dim_multiplier) as Meta ships them, tried first so that a converted params.json
# reads like Meta's own: by dim where several choices give the same width (70B, 405B, 3.2 3B),
# then Llama 2 7B/13B, Llama 3 8B, Llama 3.2 1B.
META_FFN_BY_DIM = {8192: ((4096, 1.3),), 16384: ((4096, 1.2),), 3072: ((256, 1.0),)}
META_FFN_CHOICES = ((256, None), (1024, 1.3), (256, 1.5))
# Llama 3.1 RoPE scaling: the only values Meta's `llama_models/llama3/model.py` implements.
META_ROPE_FACTOR = 8.0
META_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
DEFAULT_ROPE_THETA = 10000.0

TOP_NAMES = {"tok_embeddings": "model.embed_tokens", "norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
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


def read_config(ckpt_dir) -> dict:
    """config.json as a dict, checked to describe a Llama model."""
    path = Path(ckpt_dir) / CONFIG
    if not path.is_file():
        raise MissingFileError(f"{CONFIG} not found in {str(ckpt_dir)!r}; a Hugging Face model directory has one")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{str(path)!r} is not valid JSON ({exc}); restore the {CONFIG} of the model") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object, got {type(config).__name__}")
    if config.get("model_type") != "llama":
        raise ConfigError(
            f"{str(path)!r} describes model_type {config.get('model_type')!r}, not 'llama'; only Llama "
            "checkpoints can be loaded or converted"
        )
    return config


def read_params(ckpt_dir) -> dict:
    """Meta's params.json content for the Hugging Face model in `ckpt_dir` (see params_from_config)."""
    return params_from_config(read_config(ckpt_dir), str(Path(ckpt_dir) / CONFIG))


def tie_word_embeddings(ckpt_dir) -> bool:
    """Whether the output layer reuses the embedding (no lm_head.weight stored), as in Llama 3.2 1B/3B."""
    return bool(read_config(ckpt_dir).get("tie_word_embeddings", False))


def _required(config: dict, key: str, source: str):
    return whole_number(f"{source}: {key}", config.get(key))


def _check_architecture(config: dict, source: str, dim: int, n_heads: int) -> None:
    """Refuse the Llama variants Meta's model cannot express instead of loading them wrongly."""
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {config['hidden_act']!r} is not supported; Llama uses 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise ConfigError(f"{source}: {key} is true; Meta's Llama has no biases, so this model cannot be run")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim * n_heads != dim:
        raise ConfigError(
            f"{source}: head_dim={head_dim} but hidden_size / num_attention_heads = {dim / n_heads:g}; "
            "Meta's Llama needs head_dim = hidden_size / num_attention_heads"
        )


def params_from_config(config: dict, source: str) -> dict:
    """config.json -> params.json: the same model in Meta's keys (and Meta's key order).

    intermediate_size becomes multiple_of / ffn_dim_multiplier that reproduce it exactly
    (ffn_params); rope_scaling of type llama3 becomes use_scaled_rope (+ rope_scaling_factor
    when its factor is not Meta's 8).
    """
    dim = _required(config, "hidden_size", source)
    n_heads = _required(config, "num_attention_heads", source)
    _check_architecture(config, source, dim, n_heads)
    params = {"dim": dim, "n_layers": _required(config, "num_hidden_layers", source), "n_heads": n_heads}
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    if n_kv_heads != n_heads:
        params["n_kv_heads"] = n_kv_heads
    params["vocab_size"] = _required(config, "vocab_size", source)
    params.update(ffn_params(dim, _required(config, "intermediate_size", source), source))
    params["norm_eps"] = config.get("rms_norm_eps", 1e-6)  # transformers' LlamaConfig default
    key, rope = rope_config(config)
    theta = config.get("rope_theta", rope.get("rope_theta", DEFAULT_ROPE_THETA))
    if theta != DEFAULT_ROPE_THETA:
        params["rope_theta"] = theta
    check_params(params, source)
    params.update(rope_params(key, rope, source))
    return params


def rope_config(config: dict) -> Tuple[str, dict]:
    """(key, settings) of the rope entry: `rope_scaling` (transformers 4) or `rope_parameters` (5)."""
    for key in ("rope_scaling", "rope_parameters"):
        if isinstance(config.get(key), dict):
            return key, config[key]
    return "rope_scaling", {}


def rope_params(key: str, rope: dict, source: str) -> dict:
    """use_scaled_rope (+ rope_scaling_factor) for a llama3 rope entry `key`; {} for plain RoPE."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return {}
    if kind != "llama3":
        raise ConfigError(
            f"{source}: {key} type {kind!r} is not supported; Meta's Llama uses no scaling or type 'llama3'"
        )
    for name, meta_value in META_ROPE_FIXED.items():
        if rope.get(name) != meta_value:
            raise ConfigError(
                f"{source}: {key}.{name} is {rope.get(name)!r}; this version supports only Meta's Llama 3.1 "
                f"value {meta_value:g}"
            )
    factor = rope.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
        raise ConfigError(f"{source}: {key}.factor must be a number > 0, got {factor!r}")
    out = {"use_scaled_rope": True}
    if factor != META_ROPE_FACTOR:
        out["rope_scaling_factor"] = factor
    return out


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """SwiGLU width by Meta's rule (FeedForward in meta-llama/llama, llama/model.py)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _candidate_ffn(dim: int, hidden: int):
    yield from META_FFN_BY_DIM.get(dim, ())
    yield from META_FFN_CHOICES
    base = int(2 * (4 * dim) / 3)
    # Multipliers from the shortest decimal up to exact ones (+0.5 survives int()'s truncation).
    multipliers = [None] + [round(hidden / base, d) for d in range(1, 7)] + [hidden / base, (hidden + 0.5) / base]
    powers = [2 ** k for k in range(int(math.log2(hidden)), -1, -1) if hidden % 2 ** k == 0]
    for multiplier in multipliers:
        for multiple_of in powers:
            yield multiple_of, multiplier


def ffn_params(dim: int, hidden: int, source: str = CONFIG) -> dict:
    """{multiple_of, ffn_dim_multiplier?} with which Meta's rule gives exactly `hidden`."""
    for multiple_of, multiplier in _candidate_ffn(dim, hidden):
        if multiplier is not None and multiplier <= 0:
            continue
        if ffn_hidden_dim(dim, multiple_of, multiplier) == hidden:
            out = {"multiple_of": multiple_of}
            if multiplier is not None:
                out["ffn_dim_multiplier"] = multiplier
            return out
    raise ConfigError(
        f"{source}: intermediate_size={hidden} cannot be written as Meta's multiple_of/ffn_dim_multiplier "
        f"for hidden_size={dim}; this model cannot be expressed in Meta's layout"
    )


def meta_shapes(params: dict, vocab_size: int) -> Dict[str, Tuple[int, ...]]:
    """Every weight Meta's model has, in Meta's state-dict order, with its full shape."""
    dim, n_heads = params["dim"], params["n_heads"]
    head_dim, kv = dim // n_heads, params.get("n_kv_heads") or n_heads
    hidden = ffn_hidden_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier"))
    layer = {
        "attention.wq": (n_heads * head_dim, dim), "attention.wk": (kv * head_dim, dim),
        "attention.wv": (kv * head_dim, dim), "attention.wo": (dim, n_heads * head_dim),
        "feed_forward.w1": (hidden, dim), "feed_forward.w2": (dim, hidden), "feed_forward.w3": (hidden, dim),
        "attention_norm": (dim,), "ffn_norm": (dim,),
    }
    shapes = {"tok_embeddings.weight": (vocab_size, dim)}
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


def config_from_params(params: dict, vocab_size: int, tied: bool, dtype: torch.dtype) -> dict:
    """config.json that transformers' LlamaForCausalLM loads as the model params.json describes."""
    dim, n_heads = params["dim"], params["n_heads"]
    theta = params.get("rope_theta", DEFAULT_ROPE_THETA)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
        "intermediate_size": ffn_hidden_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        "num_hidden_layers": params["n_layers"], "num_attention_heads": n_heads,
        "num_key_value_heads": params.get("n_kv_heads") or n_heads, "head_dim": dim // n_heads,
        "vocab_size": vocab_size, "rms_norm_eps": params.get("norm_eps", 1e-5), "rope_theta": theta,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).replace("torch.", ""),
        # Meta's context lengths: Llama 2 4096, Llama 3 8192, Llama 3.1+ (scaled RoPE) 131072.
        "max_position_embeddings": 131072 if params.get("use_scaled_rope") else 8192 if theta == 500000 else 4096,
    }
    if params.get("use_scaled_rope"):
        factor = params.get("rope_scaling_factor", META_ROPE_FACTOR)
        config["rope_scaling"] = {"rope_type": "llama3", "factor": factor, **META_ROPE_FIXED}
    return config


def load_rank_state(ckpt_dir, params: dict, split_dim: Callable[[str], Optional[int]], world: int,
                    rank: int) -> Dict[str, torch.Tensor]:
    """The weights of model-parallel `rank` of `world`, in Meta names and Meta's q/k row order.

    `params` is read_params(ckpt_dir); `split_dim(meta_key)` gives the dim each weight is cut
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


def _read_slice(files: TensorFiles, name: str, key: str, shape, params: dict, dim: Optional[int], world: int,
                rank: int) -> torch.Tensor:
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
