"""Quantize a Meta checkpoint offline: `python -m llama.quantize SRC_DIR DST_DIR --int8|--int4`.

DST_DIR gets one quantized shard per source shard (the same names, consolidated.NN.pth), params.json
with a `quantization` entry, and SRC_DIR's tokenizer.model if there is one. `Llama.build(DST_DIR, ...)`
loads it directly (quantize left unset), with as many processes as it has shards. Meta's reference
refuses it at `ModelArgs(**params)` (unexpected keyword 'quantization') instead of silently
reading integer codes as weights.

Streamed: each source shard is memory-mapped and its tensors are quantized one at a time, so
memory peaks at about one quantized shard plus one float tensor (never the float model).
"""
import json
import logging
import shutil
from pathlib import Path
from typing import List

import torch

from . import checkpoint
from . import quantize as quant
from .cli import run
from .errors import ConfigError
from .flags import Flag
from .host_memory import loading_allocations
from .parallel import LLAMA2_PLAN
from .reshard import _check_target, _owned

logger = logging.getLogger(__name__)


# The modules whose weights are quantized: the linear layers of the parallel plan (the same in
# Llama 2 and 3).
LINEAR_OWNERS = frozenset(name for name, style in LLAMA2_PLAN.items() if style.kind in ("column", "row"))


def quantize_shard(state, method: str, source: str):
    """One shard's state dict -> its quantized entries, one float tensor in flight at a time, its
    mapped pages released as it is quantized (else the whole float shard would end up resident)."""
    out = {}
    for key in list(state):
        tensor = state[key]
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in LINEAR_OWNERS and parts[-1] == "weight":
            if method == "int4":
                quant.check_int4_width(tensor.shape[1], f"{source}: {key}")
            out.update({f"{key.rsplit('.', 1)[0]}.{part}": value
                        for part, value in quant.quantize_rows(method, tensor).items()})
        else:
            out[key] = _owned(tensor)
    return out


def quantize_checkpoint(src_dir, dst_dir, method: str) -> List[Path]:
    """Write `src_dir`'s checkpoint to `dst_dir` quantized with `method`; -> the shards written."""
    quant.check_method(method)
    if method is None:
        raise ConfigError("no quantization chosen; pass --int8 or --int4")
    src_dir, dst_dir = checkpoint.source_dir(src_dir, "quantize", "llama-2-7b/"), Path(dst_dir)
    sources = checkpoint.find_shards(src_dir)
    params, stored = quant.read_params(src_dir)
    if stored is not None:
        raise ConfigError(
            f"SRC_DIR {str(src_dir)!r} is quantized to {stored} already; quantize the original float checkpoint"
        )
    _check_target(src_dir, dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources:
        out = dst_dir / path.name
        with loading_allocations():  # the codes stay, the float temporaries go: no heap left fragmented
            quantized = quantize_shard(checkpoint.load_shard(path), method, str(path))
        torch.save(quantized, out)
        del quantized
        logger.info("wrote %s", out)
        written.append(out)
    (dst_dir / "params.json").write_text(json.dumps({**params, quant.MARKER: quant.marker(method)}, indent=2) + "\n")
    if (src_dir / "tokenizer.model").is_file():
        shutil.copyfile(src_dir / "tokenizer.model", dst_dir / "tokenizer.model")
    return written


FLAGS = {
    "src_dir": Flag("the float checkpoint folder to read: params.json and consolidated.*.pth", "DIR"),
    "dst_dir": Flag("an empty (or new) folder for the quantized checkpoint", "DIR"),
    "int8": Flag("int8 weights, one scale per output channel (about 1/4 of float32)"),
    "int4": Flag(f"int4 weights in groups of {quant.INT4_GROUP} along the input (about 1/7 of float32)"),
}


def main(src_dir: str, dst_dir: str, *, int8: bool = False, int4: bool = False):
    if int8 == int4:
        raise ConfigError("choose one quantization: --int8 or --int4")
    method = "int8" if int8 else "int4"
    written = quantize_checkpoint(src_dir, dst_dir, method)
    print(f"wrote {len(written)} {method} shard(s) and params.json to {dst_dir}")


if __name__ == "__main__":
    run(main, FLAGS, prog="python -m llama.quantize")
