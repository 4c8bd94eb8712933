"""Change a checkpoint's shard count offline: `python -m llama.reshard SRC_DIR DST_DIR --shards N`.

DST_DIR gets consolidated.00.pth .. consolidated.{N-1}.pth and a copy of params.json, in the
layout Meta's reference loads with `torchrun --nproc_per_node N`: the same key names (rope.freqs
kept), every weight split along the dim that the parallel plan (`llama.parallel`) gives. Shards are written
one at a time, each reading only the source shards it needs, so memory peaks at about one output
shard plus the source shards it draws on.
"""
import logging
import shutil
from pathlib import Path
from typing import List

import torch

from . import checkpoint
from .cli import run
from .errors import ConfigError
from .flags import Flag
from .parallel import PLANS
from .validation import whole_number

logger = logging.getLogger(__name__)


def _check_target(src_dir: Path, dst_dir: Path) -> None:
    if dst_dir.exists() and dst_dir.resolve() == src_dir.resolve():
        raise ConfigError(
            f"DST_DIR {str(dst_dir)!r} is the source directory; write the new shards to another directory"
        )
    if dst_dir.exists() and not dst_dir.is_dir():
        raise ConfigError(f"DST_DIR {str(dst_dir)!r} is a file; name a directory (it is created if missing)")
    stale = sorted(p.name for p in dst_dir.glob("*.pth")) if dst_dir.is_dir() else []
    if stale:
        raise ConfigError(
            f"DST_DIR {str(dst_dir)!r} already holds checkpoint files {stale[:3]}; loaders take every *.pth "
            "there, so old and new shards would mix: choose an empty directory"
        )


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    # torch.save writes a tensor's whole storage: a slice of a source shard must be copied out
    # first, or each output shard would carry the full source tensor.
    if tensor.untyped_storage().nbytes() != tensor.nbytes or not tensor.is_contiguous():
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def reshard(src_dir, dst_dir, shards: int) -> List[Path]:
    """Write the checkpoint in `src_dir` to `dst_dir` with `shards` shards; -> the files written."""
    whole_number("--shards", shards, fix="; e.g. --shards 2")
    src_dir, dst_dir = checkpoint.source_dir(src_dir, "reshard", "llama-2-13b/"), Path(dst_dir)
    sources = checkpoint.find_shards(src_dir)
    params = checkpoint.read_params(src_dir)
    n_heads = params.get("n_heads", 32)
    n_kv_heads = params.get("n_kv_heads") or n_heads
    why = checkpoint.parallelism_problem(len(sources), shards, n_heads, n_kv_heads)
    if why is not None:
        valid = checkpoint.valid_world_sizes(len(sources), n_heads, n_kv_heads)
        raise ConfigError(
            f"a checkpoint with {len(sources)} shards cannot be resharded into {shards}: {why}; "
            f"valid shard counts: {valid}"
        )
    _check_target(src_dir, dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for part in range(shards):
        state = checkpoint.reshard_state(sources, shards, part, PLANS[checkpoint.family(sources, params)])
        path = dst_dir / f"consolidated.{part:02d}.pth"
        torch.save({key: _owned(tensor) for key, tensor in state.items()}, path)
        logger.info("wrote %s (%d of %d)", path, part + 1, shards)
        written.append(path)
    shutil.copyfile(src_dir / "params.json", dst_dir / "params.json")
    return written


FLAGS = {
    "src_dir": Flag("the checkpoint folder to read: params.json and consolidated.*.pth", "DIR"),
    "dst_dir": Flag("an empty (or new) folder for the resharded checkpoint", "DIR"),
    "shards": Flag("how many shards to write: the model-parallel size (torchrun --nproc_per_node) it is for", "N",
                   example="2"),
}


def main(src_dir: str, dst_dir: str, *, shards: int):
    written = reshard(src_dir, dst_dir, shards)
    print(f"wrote {len(written)} shards and params.json to {dst_dir}")


if __name__ == "__main__":
    run(main, FLAGS, prog="python -m llama.reshard")
