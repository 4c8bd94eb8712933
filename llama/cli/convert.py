"""Convert a checkpoint between Meta's and Hugging Face's layouts, offline.

    python -m llama.convert SRC DST [--to meta|hf] [--shards N] [--dtype bfloat16] [--force]

HF -> Meta writes params.json and consolidated.NN.pth (--shards N, for N model-parallel
processes); Meta (any shard count) -> HF writes config.json and model.safetensors, split into
model-0000i-of-0000n.safetensors with model.safetensors.index.json above --max_shard_size. The
direction follows from SRC when --to is omitted. DST follows the offline tools' one rule
(llama.cli.destination): a new folder, or an existing one replaced with --force, written beside
itself and renamed into place when complete. A tokenizer.model in SRC is copied along.

Meta -> HF also keeps params.json as original/params.json (where Meta's own Hugging Face
repositories keep it), and HF -> Meta writes that file back verbatim when it describes the same
model as config.json: a Meta -> HF -> Meta round trip gives the same params.json and tensors.
"""

import json
import logging
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError
from ..layers.plan import PLANS, split_dim
from ..runtime.progress import Progress
from ..validation import whole_number
from ..weights import hf, hf_config, meta, params_json, tokenizer_files
from ..weights.gguf import refuse_gguf
from .destination import check_destination, copy_tokenizer, written_beside
from .flags import Flag
from .run import run

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
# Meta's Llama 3 tokenizer (meta-llama/llama3, llama/tokenizer.py): <|begin_of_text|>, <|end_of_text|>.
LLAMA3_BOS_EOS = (128000, 128001)
LAYOUT_NAMES = {"meta": "Meta's layout", "hf": "Hugging Face's layout"}


def parse_size(value) -> int:
    """'5GB', '500MB', '2GiB' or a byte count -> bytes (decimal units, as transformers counts them)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(value).upper())
    if isinstance(value, bool) or not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--max_shard_size must be a size like 5GB, 500MB or a byte count, got {value!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2) or ""])


def _check_options(layout: str, to: Optional[str], shards, dtype: Optional[str]) -> str:
    to = to or ("meta" if layout == "hf" else "hf")
    if to not in ("meta", "hf"):
        raise ConfigError(f"--to must be 'meta' or 'hf', got {to!r}")
    if to == layout:
        hint = "" if to == "hf" else "; to change its shard count use python -m llama.reshard"
        raise ConfigError(
            f"SRC is already a {'Hugging Face' if to == 'hf' else 'Meta'} checkpoint (--to {to}): "
            f"nothing to convert{hint}"
        )
    whole_number("--shards", shards, fix="; e.g. --shards 2")
    if to == "hf" and shards != 1:
        raise ConfigError("--shards applies to --to meta; for Hugging Face output use --max_shard_size")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return to


def convert(
    src,
    dst,
    to: Optional[str] = None,
    shards: int = 1,
    dtype: Optional[str] = None,
    max_shard_size="5GB",
    force: bool = False,
) -> Path:
    """Convert the checkpoint in `src` into `dst` (see the module docstring) -> dst."""
    src, dst = Path(src), Path(dst)
    refuse_gguf(src)
    to = _check_options(hf.checkpoint_layout(src), to, shards, dtype)
    limit = parse_size(max_shard_size)
    check_destination(src, dst, force)
    with written_beside(dst) as work, Progress(f"converting to {LAYOUT_NAMES[to]}", unit="tensor") as bar:
        if to == "meta":
            _hf_to_meta(src, work, shards, None if dtype is None else DTYPES[dtype], bar)
        else:
            _meta_to_hf(src, work, None if dtype is None else DTYPES[dtype], limit, bar)
        copy_tokenizer(src, work, to)
    return dst


def _cast(state: Dict[str, torch.Tensor], dtype: Optional[torch.dtype], bar: Progress) -> Dict[str, torch.Tensor]:
    """`state` in `dtype` (None: as stored); the first half of `bar`, whose second half is the writing."""
    bar.total = 2 * len(state)
    out = {}
    for key, tensor in state.items():
        out[key] = tensor if dtype is None else tensor.to(dtype)
        bar.update()
    return out


def _hf_to_meta(src: Path, out: Path, shards: int, dtype: Optional[torch.dtype], bar: Progress) -> None:
    params, original_text = meta_params(src)
    n_heads, n_kv_heads = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    why = meta.parallelism_problem(1, shards, n_heads, n_kv_heads)
    if why is not None:
        valid = meta.valid_world_sizes(1, n_heads, n_kv_heads)
        raise ConfigError(f"--shards {shards} is not possible: {why}; valid shard counts: {valid}")
    state = _cast(hf.load_rank_state(src, params, partial(split_dim, PLANS[meta.family([], params)]), 1, 0), dtype, bar)
    meta.save_checkpoint(state, params, out, shards)
    bar.update(len(state))
    if original_text is not None:
        (out / "params.json").write_text(original_text)


def meta_params(src: Path) -> Tuple[dict, Optional[str]]:
    """(params from config.json, the text of original/params.json if it describes that same model)."""
    params = hf_config.params_from_hf_dir(src)
    path = src / meta.ORIGINAL / "params.json"
    if not path.is_file():
        return params, None
    text = path.read_text()
    try:
        original = json.loads(text)
        same = isinstance(original, dict) and _signature(original, params["vocab_size"]) == _signature(params, 0)
    except (json.JSONDecodeError, KeyError, TypeError):
        same = False
    if not same:
        logger.warning("ignoring %s: it does not describe the model in config.json", path)
        return params, None
    return params, text


def _signature(params: dict, vocab_size: int) -> tuple:
    """What makes two params.json the same model (vocab_size -1: the tokenizer's, here `vocab_size`)."""
    p = params
    scaled = bool(p.get("use_scaled_rope", False))
    return (
        p["dim"],
        p["n_layers"],
        p["n_heads"],
        p.get("n_kv_heads") or p["n_heads"],
        vocab_size if p.get("vocab_size", -1) == -1 else p["vocab_size"],
        hf_config.ffn_hidden_dim(p["dim"], p.get("multiple_of", 256), p.get("ffn_dim_multiplier")),
        p.get("norm_eps", 1e-5),
        p.get("rope_theta", hf_config.DEFAULT_ROPE_THETA),
        scaled,
        p.get("rope_scaling_factor", hf_config.META_ROPE_FACTOR) if scaled else None,
    )


def _meta_to_hf(src: Path, out: Path, dtype: Optional[torch.dtype], limit: int, bar: Progress) -> None:
    params = params_json.read_params_json(src)
    shards = meta.find_shards(src)
    state = meta.reshard_state(shards, 1, 0, PLANS[meta.family(shards, params)])
    state = {k: t for k, t in state.items() if k not in meta.IGNORED_KEYS}
    tensors, config = hf.to_hf(_cast(state, dtype, bar), params)
    config.update(_special_ids(src / tokenizer_files.TOKENIZER))
    _save_safetensors(tensors, out, limit, bar)
    (out / hf_config.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (out / meta.ORIGINAL).mkdir()
    shutil.copyfile(src / "params.json", out / meta.ORIGINAL / "params.json")


def _groups(tensors: Dict[str, torch.Tensor], limit: int) -> List[Dict[str, torch.Tensor]]:
    groups: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > limit:
            groups, size = groups + [{}], 0
        groups[-1][name] = tensor
        size += nbytes
    return groups


def _save_safetensors(tensors: Dict[str, torch.Tensor], out: Path, limit: int, bar: Progress) -> None:
    from safetensors.torch import save_file

    groups = _groups(tensors, limit)
    bar.total = bar.n + len(tensors)  # a tied output layer is not written
    names = (
        [hf.SINGLE_FILE]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    for name, group in zip(names, groups):
        # transformers refuses safetensors files without this metadata entry.
        save_file({k: t.contiguous() for k, t in group.items()}, str(out / name), metadata={"format": "pt"})
        bar.update(len(group))
    if len(groups) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {key: name for name, group in zip(names, groups) for key in group}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / hf.INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _special_ids(path: Path) -> dict:
    """bos/eos ids for config.json, from the tokenizer that comes with the weights (if any)."""
    if not path.is_file():
        return {}
    from ..tokenizer import is_bpe_table

    if is_bpe_table(str(path)):
        bos, eos = LLAMA3_BOS_EOS
    else:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor()
        try:
            sp.Load(str(path))
        except (OSError, RuntimeError):
            logger.warning("%s is not a tokenizer this tool can read; config.json gets no bos/eos ids", path)
            return {}
        bos, eos = sp.bos_id(), sp.eos_id()
    return {"bos_token_id": bos, "eos_token_id": eos}


FLAGS = {
    "src": Flag(
        "the checkpoint folder to read: Meta's (params.json, consolidated.*.pth) or Hugging Face's "
        "(config.json, *.safetensors)",
        "DIR",
    ),
    "dst": Flag("the folder to write, in the other layout (must not exist, unless --force)", "DIR"),
    "to": Flag("the layout to write", "LAYOUT", choices=("meta", "hf"), default="the other one than SRC's"),
    "shards": Flag(
        "Meta output: how many consolidated.NN.pth shards (the model-parallel size it is for)", "N", example="2"
    ),
    "dtype": Flag(
        "cast the weights", "DTYPE", choices=("float32", "bfloat16", "float16"), default="keep the stored dtype"
    ),
    "max_shard_size": Flag(
        "Hugging Face output: largest safetensors file before splitting with an index", "SIZE", example="5GB"
    ),
    "force": Flag("replace an existing DST (only once the new one is complete)"),
}


def main(
    src: str,
    dst: str,
    *,
    to: Optional[str] = None,
    shards: int = 1,
    dtype: Optional[str] = None,
    max_shard_size: str = "5GB",
    force: bool = False,
):
    """Convert SRC (Meta or Hugging Face checkpoint directory) into DST in the other layout."""
    out = convert(src, dst, to=to, shards=shards, dtype=dtype, max_shard_size=max_shard_size, force=force)
    print(f"wrote {'Hugging Face' if hf.is_hf_dir(out) else 'Meta'} checkpoint to {out}")


def cli() -> None:
    """`python -m llama.convert`."""
    run(main, FLAGS, prog="python -m llama.convert")
