"""Quantized checkpoints (`python -m llama.quantize SRC DST --int8|--int4`): the params.json marker
that says a checkpoint holds integer codes, reading it back, and the rules for loading one.

Meta's loader refuses such a params.json at `ModelArgs(**params)` (unexpected keyword
'quantization') instead of silently reading integer codes as weights.
"""

import json
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CheckpointError, ConfigError
from ..kernels.formats import INT4_GROUP, METHODS
from . import params_json

MARKER = "quantization"  # the params.json key a quantized checkpoint carries


def marker(method: str) -> dict:
    return {"method": method, "group_size": INT4_GROUP} if method == "int4" else {"method": method}


def split_params(params: dict, source: str) -> Tuple[dict, Optional[str]]:
    """params.json as read -> (Meta's params without the marker, the stored quantization or None)."""
    if MARKER not in params:
        return params, None
    params = dict(params)
    found = params.pop(MARKER)
    if not isinstance(found, dict) or found.get("method") not in METHODS or found != marker(found["method"]):
        raise CheckpointError(
            f"{source}: {MARKER}={found!r} is not a quantization this version reads "
            f"({', '.join(json.dumps(marker(m)) for m in METHODS)}); quantize the float checkpoint again "
            "with python -m llama.quantize"
        )
    return params, found["method"]


def read_stored_params(ckpt_dir) -> Tuple[dict, Optional[str]]:
    """A Meta checkpoint's params.json -> (its params, the quantization it is stored in or None).

    Without the marker this is `llama.weights.params_json.read_params_json`, errors and all.
    """
    path = Path(ckpt_dir) / "params.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict) or MARKER not in raw:
        return params_json.read_params_json(ckpt_dir), None
    params, stored = split_params(raw, str(path))
    params_json.check_known(params, str(path))
    return params, stored


def check_stored(stored: Optional[str], requested: Optional[str], n_shards: int, world: int, source: str) -> None:
    """A quantized checkpoint runs as stored: the same method, one process per shard."""
    if stored is None:
        return
    if requested not in (None, stored):
        raise ConfigError(
            f"{source} is quantized to {stored}; it cannot be loaded with quantize={requested!r}: "
            f"leave quantize unset (or {stored!r}), or quantize the float checkpoint instead"
        )
    if world != n_shards:
        raise ConfigError(
            f"{source} is quantized to {stored} with {n_shards} shard(s) and cannot be resharded to {world} "
            f"processes; run {n_shards} process(es), or quantize a float checkpoint with {world} shard(s)"
        )
