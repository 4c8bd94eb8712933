"""Hugging Face config.json <-> Meta's params.json: the same model described in either's keys.

config.json's intermediate_size becomes the multiple_of / ffn_dim_multiplier that reproduce it
under Meta's rule, its llama3 rope entry becomes use_scaled_rope, and Llama variants Meta's model
cannot express are refused. The tensors themselves (names, q/k row order) are `hf.py`'s.
"""

import json
import math
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..errors import ConfigError, MissingFileError
from ..model import ModelArgs
from ..validation import whole_number
from .params_json import check_params

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


def params_from_hf_dir(ckpt_dir) -> dict:
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
    out: dict = {"use_scaled_rope": True}
    if factor != META_ROPE_FACTOR:
        out["rope_scaling_factor"] = factor
    return out


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """SwiGLU width by Meta's rule (FeedForward in meta-llama/llama, llama/model.py): ModelArgs's."""
    return ModelArgs(dim=dim, multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier).ffn_hidden_dim


def _candidate_ffn(dim: int, hidden: int):
    yield from META_FFN_BY_DIM.get(dim, ())
    yield from META_FFN_CHOICES
    base = int(2 * (4 * dim) / 3)
    # Multipliers from the shortest decimal up to exact ones (+0.5 survives int()'s truncation).
    multipliers = [None] + [round(hidden / base, d) for d in range(1, 7)] + [hidden / base, (hidden + 0.5) / base]
    powers = [2**k for k in range(int(math.log2(hidden)), -1, -1) if hidden % 2**k == 0]
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


def config_from_params(params: dict, vocab_size: int, tied: bool, dtype: torch.dtype) -> dict:
    """config.json that transformers' LlamaForCausalLM loads as the model params.json describes."""
    dim, n_heads = params["dim"], params["n_heads"]
    theta = params.get("rope_theta", DEFAULT_ROPE_THETA)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": dim,
        "intermediate_size": ffn_hidden_dim(dim, params.get("multiple_of", 256), params.get("ffn_dim_multiplier")),
        "num_hidden_layers": params["n_layers"],
        "num_attention_heads": n_heads,
        "num_key_value_heads": params.get("n_kv_heads") or n_heads,
        "head_dim": dim // n_heads,
        "vocab_size": vocab_size,
        "rms_norm_eps": params.get("norm_eps", 1e-5),
        "rope_theta": theta,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "torch_dtype": str(dtype).replace("torch.", ""),
        # Meta's context lengths: Llama 2 4096, Llama 3 8192, Llama 3.1+ (scaled RoPE) 131072.
        "max_position_embeddings": 131072 if params.get("use_scaled_rope") else 8192 if theta == 500000 else 4096,
    }
    if params.get("use_scaled_rope"):
        factor = params.get("rope_scaling_factor", META_ROPE_FACTOR)
        config["rope_scaling"] = {"rope_type": "llama3", "factor": factor, **META_ROPE_FIXED}
    return config
