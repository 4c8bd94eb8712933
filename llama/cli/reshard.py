"""Change a checkpoint's shard count offline: `python -m llama.reshard SRC_DIR DST_DIR --shards N`.

DST_DIR (a new folder, or an existing one with --force; written beside and renamed into place, see
llama.cli.destination) gets consolidated.00.pth .. consolidated.{N-1}.pth, a copy of params.json and
of the tokenizer.model that sits with the weights, in the
layout Meta's reference loads with `torchrun --nproc_per_node N`: the same key names (rope.freqs
kept), every weight split along the dim that the parallel plan (`llama.layers.plan`) gives. Shards are written
one at a time, each reading only the source shards it needs, so memory peaks at about one output
shard plus the source shards it draws on.
"""

import logging
import shutil
from pathlib import Path
from typing import List

from ..errors import ConfigError
from ..layers.plan import PLANS
from ..runtime.progress import Progress
from ..validation import whole_number
from ..weights import meta, params_json
from ..weights.gguf import refuse_gguf
from .destination import check_destination, copy_tokenizer, written_beside
from .flags import Flag
from .run import run

logger = logging.getLogger(__name__)


def reshard(src_dir, dst_dir, shards: int, force: bool = False) -> List[Path]:
    """Write the checkpoint in `src_dir` to `dst_dir` with `shards` shards (and its tokenizer.model);
    -> the files written."""
    whole_number("--shards", shards, fix="; e.g. --shards 2")
    refuse_gguf(src_dir)
    src_dir, dst_dir = meta.source_dir(src_dir, "reshard", "llama-2-13b/"), Path(dst_dir)
    sources = meta.find_shards(src_dir)
    params = params_json.read_params_json(src_dir)
    n_heads = params.get("n_heads", 32)
    n_kv_heads = params.get("n_kv_heads") or n_heads
    why = meta.parallelism_problem(len(sources), shards, n_heads, n_kv_heads)
    if why is not None:
        valid = meta.valid_world_sizes(len(sources), n_heads, n_kv_heads)
        raise ConfigError(
            f"a checkpoint with {len(sources)} shards cannot be resharded into {shards}: {why}; "
            f"valid shard counts: {valid}"
        )
    check_destination(src_dir, dst_dir, force, "SRC_DIR", "DST_DIR")
    names = [f"consolidated.{part:02d}.pth" for part in range(shards)]
    with written_beside(dst_dir) as work, Progress(f"resharding into {shards} shards", shards, "shard") as bar:
        for part, name in enumerate(names):
            state = meta.reshard_state(sources, shards, part, PLANS[meta.family(sources, params)])
            meta.save_shard(state, work / name)
            bar.update()
            logger.info("wrote %s (%d of %d)", dst_dir / name, part + 1, shards)
        shutil.copyfile(src_dir / "params.json", work / "params.json")
        copy_tokenizer(src_dir, work, "meta")
    return [dst_dir / name for name in names]


FLAGS = {
    "src_dir": Flag("the checkpoint folder to read: params.json and consolidated.*.pth", "DIR"),
    "dst_dir": Flag("a new folder for the resharded checkpoint (an existing one only with --force)", "DIR"),
    "shards": Flag(
        "how many shards to write: the model-parallel size (torchrun --nproc_per_node) it is for", "N", example="2"
    ),
    "force": Flag("replace an existing DST_DIR (only once the new one is complete)"),
}


def main(src_dir: str, dst_dir: str, *, shards: int, force: bool = False):
    written = reshard(src_dir, dst_dir, shards, force)
    print(f"wrote {len(written)} shards and params.json to {dst_dir}")


def cli() -> None:
    """`python -m llama.reshard`."""
    run(main, FLAGS, prog="python -m llama.reshard")
