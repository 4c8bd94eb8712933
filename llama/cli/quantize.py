"""Quantize a checkpoint offline: `python -m llama.quantize SRC_DIR DST_DIR --int8|--int4`.

SRC_DIR is a float checkpoint in Meta's layout (params.json + consolidated.*.pth) or Hugging Face's
(config.json + *.safetensors, read into Meta's names and row order by llama.weights.hf). DST_DIR (a
new folder, or an existing one with --force; written beside and renamed into place, see
llama.cli.destination) gets one quantized shard per source shard (the same names,
consolidated.NN.pth; a Hugging Face folder gives one, consolidated.00.pth), params.json with a
`quantization` entry, and the tokenizer that sits with SRC_DIR's weights, if any.
`Llama.build(DST_DIR, ...)` loads it directly (quantize left unset), with as many processes as it
has shards (llama.weights.quantized).

Streamed: each source shard is memory-mapped and its tensors are quantized one at a time, so
memory peaks at about one quantized shard plus one float tensor (never the float model).
"""

import json
import logging
from functools import partial
from pathlib import Path
from typing import Callable, List, Mapping, Tuple

import torch

from ..errors import ConfigError
from ..kernels.formats import INT4_GROUP, check_int4_width, check_method, quantize_rows
from ..layers.plan import LINEAR_OWNERS, PLANS, split_dim
from ..runtime.host_memory import loading_allocations
from ..runtime.progress import Progress
from ..weights import hf, meta
from ..weights.gguf import refuse_gguf
from ..weights.quantized import MARKER, marker, read_stored_params
from .convert import meta_params
from .destination import check_destination, copy_tokenizer, written_beside
from .flags import Flag
from .run import run

logger = logging.getLogger(__name__)

# (the shard's name in DST_DIR, what to call its source in messages, a reader of its state dict)
Source = Tuple[str, str, Callable[[], Mapping[str, torch.Tensor]]]


def quantize_shard(state, method: str, source: str, after_each: Callable[[], None] = lambda: None):
    """One shard's state dict -> its quantized entries, one float tensor in flight at a time, its
    mapped pages released as it is quantized (else the whole float shard would end up resident)."""
    out = {}
    for key in list(state):
        tensor = state[key]
        parts = key.split(".")
        if len(parts) >= 2 and parts[-2] in LINEAR_OWNERS and parts[-1] == "weight":
            if method == "int4":
                check_int4_width(tensor.shape[1], f"{source}: {key}")
            out.update(
                {f"{key.rsplit('.', 1)[0]}.{part}": value for part, value in quantize_rows(method, tensor).items()}
            )
        else:
            out[key] = tensor
        after_each()
    return out


def read_sources(src_dir: Path) -> Tuple[dict, List[Source]]:
    """SRC_DIR's params (Meta's names) and its shards: Meta's as they are, a Hugging Face folder as one."""
    if hf.is_hf_dir(src_dir):
        params, original = meta_params(src_dir)  # original: Meta's own params.json where it came along
        split = partial(split_dim, PLANS[meta.family([], params)])
        read = partial(hf.load_rank_state, src_dir, params, split, 1, 0)
        return params if original is None else json.loads(original), [("consolidated.00.pth", str(src_dir), read)]
    sources = meta.find_shards(src_dir)
    params, stored = read_stored_params(src_dir)
    if stored is not None:
        raise ConfigError(
            f"SRC_DIR {str(src_dir)!r} is quantized to {stored} already; quantize the original float checkpoint"
        )
    return params, [(path.name, str(path), partial(meta.load_shard, path)) for path in sources]


def quantize_checkpoint(src_dir, dst_dir, method: str, force: bool = False) -> List[Path]:
    """Write `src_dir`'s checkpoint to `dst_dir` quantized with `method`; -> the shards written."""
    check_method(method)
    if method is None:
        raise ConfigError("no quantization chosen; pass --int8 or --int4")
    refuse_gguf(src_dir)
    src_dir, dst_dir = meta.source_dir(src_dir, "quantize", "llama-2-7b/"), Path(dst_dir)
    params, sources = read_sources(src_dir)
    check_destination(src_dir, dst_dir, force, "SRC_DIR", "DST_DIR")
    with written_beside(dst_dir) as work:
        for name, source, read in sources:
            with Progress(f"quantizing {name} to {method}", unit="tensor") as bar:
                with loading_allocations():  # the codes stay, the float temporaries go: no heap left fragmented
                    state = read()
                    bar.total = len(state)
                    quantized = quantize_shard(state, method, source, bar.update)
                    del state
                meta.save_shard(quantized, work / name)
                del quantized
            logger.info("wrote %s", dst_dir / name)
        (work / "params.json").write_text(json.dumps({**params, MARKER: marker(method)}, indent=2) + "\n")
        copy_tokenizer(src_dir, work, "meta")
    return [dst_dir / name for name, _, _ in sources]


FLAGS = {
    "src_dir": Flag(
        "the float checkpoint folder to read: Meta's (params.json, consolidated.*.pth) or Hugging Face's "
        "(config.json, *.safetensors)",
        "DIR",
    ),
    "dst_dir": Flag("a new folder for the quantized checkpoint (an existing one only with --force)", "DIR"),
    "int8": Flag("int8 weights, one scale per output channel (about 1/4 of float32)"),
    "int4": Flag(f"int4 weights in groups of {INT4_GROUP} along the input (about 1/7 of float32)"),
    "force": Flag("replace an existing DST_DIR (only once the new one is complete)"),
}


def main(src_dir: str, dst_dir: str, *, int8: bool = False, int4: bool = False, force: bool = False):
    if int8 == int4:
        raise ConfigError("choose one quantization: --int8 or --int4")
    method = "int8" if int8 else "int4"
    written = quantize_checkpoint(src_dir, dst_dir, method, force)
    print(f"wrote {len(written)} {method} shard(s) and params.json to {dst_dir}")


def cli() -> None:
    """`python -m llama.quantize`."""
    run(main, FLAGS, prog="python -m llama.quantize")
