"""A Meta checkpoint's params.json: read, and checked for keys, types and consistency before any
weight is read (also for the params that llama.weights.hf_config derives from a config.json)."""

import json
import os
from dataclasses import fields
from pathlib import Path

from ..errors import ConfigError, MissingFileError
from ..model import ModelArgs

PARAM_KEYS = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "multiple_of",
    "ffn_dim_multiplier",
    "norm_eps",
    "rope_theta",
    "use_scaled_rope",
    "rope_scaling_factor",
)
INT_PARAMS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of")
OPTIONAL_PARAMS = ("n_kv_heads", "ffn_dim_multiplier", "rope_scaling_factor")


def as_path(value, name: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a path (str), got {type(value).__name__} {value!r}")
    return Path(value)


def read_params_json(ckpt_dir) -> dict:
    """params.json as a dict, checked for types and consistency before any weight is read."""
    path = as_path(ckpt_dir, "ckpt_dir") / "params.json"
    if not path.is_file():
        raise MissingFileError(f"params.json not found in {str(ckpt_dir)!r}; it comes with the weights")
    try:
        params = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{str(path)!r} is not valid JSON ({exc}); restore the params.json that came with the weights"
        ) from None
    if not isinstance(params, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object, got {type(params).__name__}")
    check_known(params, str(path))
    return params


def check_known(params: dict, source: str) -> None:
    """Only params.json's known keys, each of the right type and consistent with the others."""
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"{source!r} has unknown keys {unknown}; known keys: {list(PARAM_KEYS)}")
    check_params(params, source)


def _check_types(params: dict, source: str) -> None:
    for key, value in params.items():
        optional = key in OPTIONAL_PARAMS
        if value is None and optional:
            continue
        if key == "use_scaled_rope":
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: use_scaled_rope must be true or false, got {value!r}")
            continue
        want_int = key in INT_PARAMS
        ok = isinstance(value, int) if want_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ConfigError(
                f"{source}: {key} must be {'an integer' if want_int else 'a number'}"
                f"{' or null' if optional else ''}, got {value!r}"
            )
        allowed_minus_one = key == "vocab_size" and value == -1
        if not (value > 0 or allowed_minus_one):  # also rejects NaN, which json accepts
            hint = " (or -1: take it from the tokenizer)" if key == "vocab_size" else ""
            raise ConfigError(f"{source}: {key} must be > 0{hint}, got {value!r}")


def check_params(params: dict, source: str) -> None:
    """Types, signs and the divisibility rules attention needs; `source` names params.json in messages."""
    _check_types(params, source)
    defaults = {f.name: f.default for f in fields(ModelArgs)}
    p = {**defaults, **params}
    dim, n_heads = p["dim"], p["n_heads"]
    n_kv_heads = n_heads if p["n_kv_heads"] is None else p["n_kv_heads"]
    if dim % n_heads:
        raise ConfigError(f"{source}: dim={dim} is not divisible by n_heads={n_heads}; each head gets dim / n_heads")
    if (dim // n_heads) % 2:
        raise ConfigError(
            f"{source}: head size dim / n_heads = {dim // n_heads} is odd; rotary embeddings need an even head size"
        )
    if n_heads % n_kv_heads:
        raise ConfigError(
            f"{source}: n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}; "
            "each key/value head must serve a whole number of query heads"
        )
