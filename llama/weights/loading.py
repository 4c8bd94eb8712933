"""Loading a checkpoint directory into a model on this rank: open it (Meta or Hugging Face layout),
build the model on the meta device, apply the parallel plan, and assign this rank's weights
(memory-mapped where possible)."""

from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..layers import quantized as quantized_layers
from ..layers.parallel import parallelize
from ..layers.plan import PLANS, split_dim
from ..model import ModelArgs, Transformer
from ..runtime import memory
from ..runtime.backend import Runtime
from ..runtime.group import is_main_process
from ..runtime.host_memory import loading_allocations, release_mapped
from ..runtime.progress import Progress
from . import hf, hf_config, meta
from .gguf import refuse_gguf
from .quantized import check_stored, read_stored_params


@dataclass
class Checkpoint:
    """A checkpoint directory as the loader sees it: its params.json values (Meta's names, also for a
    Hugging Face directory), its files and its family."""

    path: Path
    params: dict
    shards: List[Path]  # Meta's consolidated.*.pth; empty for a Hugging Face directory
    stored: Optional[str] = None  # the quantization a `python -m llama.quantize` checkpoint holds

    @cached_property
    def family(self) -> str:
        """ "llama2" or "llama3": which parallel plan its shards follow (may peek into the first shard)."""
        return meta.family(self.shards, self.params)

    @property
    def n_shards(self) -> int:
        """Meta shards; a Hugging Face directory is one whole model, sliced for any process count."""
        return max(len(self.shards), 1)

    def rank_state(self, world: int, rank: int) -> Dict[str, torch.Tensor]:
        plan = PLANS[self.family]
        if not self.shards:
            return hf.load_rank_state(self.path, self.params, partial(split_dim, plan), world, rank)
        return meta.load_rank_state(self.shards, world, rank, plan)


def open_checkpoint(ckpt_dir) -> Checkpoint:
    """Find the weights and read params.json (or config.json), checking both before any weight is read."""
    if isinstance(ckpt_dir, (str, Path)):
        refuse_gguf(ckpt_dir)
    if isinstance(ckpt_dir, (str, Path)) and hf.is_hf_dir(ckpt_dir):
        params = hf_config.params_from_hf_dir(ckpt_dir)
        return Checkpoint(Path(ckpt_dir), params, [])
    shards = meta.find_shards(ckpt_dir)
    params, stored = read_stored_params(ckpt_dir)
    return Checkpoint(Path(ckpt_dir), params, shards, stored)


def empty_model(args: ModelArgs, family: str, world: int, rank: int, quantize=None) -> Transformer:
    """The model as rank `rank` of `world` holds it, on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = Transformer(args)
        parallelize(model, PLANS[family], world, rank, quantized_layers.linear_classes(quantize))
    return model


def load_model(ckpt: Checkpoint, args: ModelArgs, world: int, rank: int, rt: Runtime, quantize=None) -> Transformer:
    """The model with this rank's weights on rt.device in rt.dtype (int8 where quantized), caches set up.

    Built on the meta device and given the checkpoint's own memory-mapped tensors where no
    conversion is needed (CPU, same dtype): no weight is allocated or copied twice.
    """
    source = f"checkpoint {str(ckpt.path)!r} (rank {rank} of {world})"
    check_stored(ckpt.stored, quantize, ckpt.n_shards, world, source)
    quantize = quantize or ckpt.stored
    model = empty_model(args, ckpt.family, world, rank, quantize)
    # What the checkpoint holds, checked before anything is converted: the model itself when it is stored as run.
    stored_model = model if ckpt.stored == quantize else empty_model(args, ckpt.family, world, rank, ckpt.stored)
    expected = {k: v.shape for k, v in stored_model.state_dict().items()}
    # Reading, placing and (for quantized layers) repacking the weights: one step on the progress bar.
    with Progress("Loading weights", unit="tensor", enabled=is_main_process()) as bar:
        state = ckpt.rank_state(world, rank)
        check_vocab(state, args, world if PLANS[ckpt.family]["tok_embeddings"].dim == 0 else 1, source)
        meta.check_state(state, expected, source)
        layers = quantized_layers.quantized_layers(model)
        bar.total = len(state) + len(layers)
        _place(model, state, layers, rt, bar)
        quantized_layers.prepare(model, bar.update)
    model.requires_grad_(False)
    model.setup_caches()
    return model.eval()


def _place(model: Transformer, state: Dict[str, torch.Tensor], layers, rt: Runtime, bar: Progress) -> None:
    """Give `model` the weights in `state` (emptied as they are placed) on rt.device in rt.dtype."""
    placed = {}
    for key in list(state):
        # To the device in the stored dtype, then converted there: one tensor in flight at a time.
        tensor = state.pop(key).to(device=rt.device)
        if tensor.is_floating_point():  # not the integer codes of a quantized checkpoint
            converted = tensor.to(dtype=rt.dtype)
            if converted is not tensor:
                release_mapped(tensor)  # a mapped source's pages need not stay resident beside the copy
            tensor = converted
        placed.update(quantized_layers.quantize_entry(key, tensor, layers))
        bar.update()
    model.load_state_dict(placed, strict=True, assign=True)
    placed.clear()  # the model holds them now; prepare may swap some for converted copies


def load_model_or_explain(
    ckpt: Checkpoint, args: ModelArgs, world: int, rank: int, rt: Runtime, quantize=None
) -> Transformer:
    """load_model, with an allocation failure explained in terms of the sizes the user chose."""
    try:
        with loading_allocations():
            return load_model(ckpt, args, world, rank, rt, quantize)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; CPU and MPS raise plain RuntimeError
        text = str(exc).lower()
        if not any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory")):
            raise
        cache = memory.gib(memory.cache_bytes(args, world, rt.dtype))
        raise ConfigError(
            f"out of memory on {rt.device} while loading the model (its KV cache takes {cache} for "
            f"max_batch_size={args.max_batch_size} x max_seq_len={args.max_seq_len}); lower max_seq_len "
            "or max_batch_size, use a smaller --dtype, or spread the model over more processes"
        ) from None


def check_vocab(state, args: ModelArgs, vocab_parts: int, source: str) -> None:
    """The embedding's vocabulary (its rows times `vocab_parts`, the ranks sharing them) is the tokenizer's."""
    emb = state.get("tok_embeddings.weight")
    if emb is not None and emb.shape[0] * vocab_parts != args.vocab_size:
        raise CheckpointError(
            f"{source}: the embedding has {emb.shape[0] * vocab_parts} rows but the tokenizer has "
            f"{args.vocab_size} words; use the tokenizer.model that came with these weights"
        )
