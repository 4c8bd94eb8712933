"""Model parallelism, applied to a built model from outside: `parallelize` swaps each planned
`nn.Linear`/`nn.Embedding` of a plain `llama.model.Transformer` for a model-parallel layer holding
this rank's slice, by THE plan (llama.layers.plan).

The layers subclass fairscale's, constructed without allocating or initialising weights
(fairscale's constructors build each full weight and scatter it, which costs a full-model
allocation per rank and breaks under the meta device): the weight is `torch.empty`, and loading
assigns the real tensor. On one rank they skip fairscale's region functions, which are identities
there but cost tens of microseconds each, hundreds of times per decoded token.
"""

import logging
from contextlib import redirect_stdout
from io import StringIO
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fairscale.nn.model_parallel import initialize as fs_init
from fairscale.nn.model_parallel import layers
from fairscale.nn.model_parallel.mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
)
from torch import nn

from ..errors import CheckpointError
from ..kernels.dense import linear
from .plan import Plan, Style

logger = logging.getLogger(__name__)


def init_model_parallel(size: int) -> None:
    """fairscale's model-parallel groups over the default process group (once per process)."""
    if fs_init.model_parallel_is_initialized():
        return
    with redirect_stdout(StringIO()) as chatter:  # fairscale prints its group sizes on every rank
        fs_init.initialize_model_parallel(size)
    logger.debug(chatter.getvalue().strip())


def model_parallel_rank() -> int:
    """This process's rank within its model-parallel group (after `init_model_parallel`)."""
    return fs_init.get_model_parallel_rank()


def model_parallel_group() -> Optional[dist.ProcessGroup]:
    """fairscale's model-parallel group, or None before `init_model_parallel`."""
    return fs_init.get_model_parallel_group() if fs_init.model_parallel_is_initialized() else None


def _local(size: int, world: int, what: str) -> int:
    if size % world:
        raise CheckpointError(f"{what}={size} is not divisible by the model-parallel size {world}")
    return size // world


class _EmptyLinear(nn.Module):
    """Mixin: fairscale's linear-layer attributes with an empty (rows, cols) weight, no bias."""

    def _empty_weight(self, in_features: int, out_features: int, rows: int, cols: int, world: int) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(rows, cols), requires_grad=False)
        self.register_parameter("bias", None)
        self.master_weight = None
        self.single_rank = world == 1

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)


class ColumnParallelLinear(_EmptyLinear, layers.ColumnParallelLinear):
    """y = x W^T with W split along its output dim; gathers the full output if `gather_output`."""

    def __init__(self, in_features: int, out_features: int, world: int = 1, gather_output: bool = True):
        self.output_size_per_partition = _local(out_features, world, "out_features")
        self._empty_weight(in_features, out_features, self.output_size_per_partition, in_features, world)
        self.gather_output = gather_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_rank:
            return self.matmul(x)
        y = self.matmul(copy_to_model_parallel_region(x))
        return gather_from_model_parallel_region(y) if self.gather_output else y


class RowParallelLinear(_EmptyLinear, layers.RowParallelLinear):
    """y = x W^T with W split along its input dim; the partial products are all-reduced."""

    def __init__(self, in_features: int, out_features: int, world: int = 1):
        self.input_size_per_partition = _local(in_features, world, "in_features")
        self._empty_weight(in_features, out_features, out_features, self.input_size_per_partition, world)
        self.input_is_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)  # x is already this rank's slice (input_is_parallel)
        return y if self.single_rank else reduce_from_model_parallel_region(y)


def _embedding_attributes(module: Any, num_embeddings: int, embedding_dim: int) -> None:
    module.num_embeddings, module.embedding_dim = num_embeddings, embedding_dim
    module.padding_idx, module.max_norm, module.norm_type = None, None, 2.0
    module.scale_grad_by_freq, module.sparse, module._weight = False, False, None


class ParallelEmbedding(layers.ParallelEmbedding):
    """Embedding with the embedding dim split across ranks (Llama 2); the slices are gathered."""

    def __init__(self, num_embeddings: int, embedding_dim: int, world: int = 1):
        nn.Module.__init__(self)
        _embedding_attributes(self, num_embeddings, embedding_dim)
        self.embedding_dim_per_partition = _local(embedding_dim, world, "dim")
        self.weight = nn.Parameter(torch.empty(num_embeddings, self.embedding_dim_per_partition), requires_grad=False)
        self.single_rank = world == 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.single_rank:
            return F.embedding(tokens, self.weight)
        return super().forward(tokens)


class VocabParallelEmbedding(layers.VocabParallelEmbedding):
    """Embedding with the vocabulary split across ranks (Llama 3): each rank looks up its own rows,
    zero elsewhere, and the results are summed."""

    def __init__(self, num_embeddings: int, embedding_dim: int, world: int = 1, rank: int = 0):
        nn.Module.__init__(self)
        _embedding_attributes(self, num_embeddings, embedding_dim)
        self.num_embeddings_per_partition = _local(num_embeddings, world, "vocab_size")
        self.vocab_start_index = rank * self.num_embeddings_per_partition
        self.vocab_end_index = self.vocab_start_index + self.num_embeddings_per_partition
        self.weight = nn.Parameter(torch.empty(self.num_embeddings_per_partition, embedding_dim), requires_grad=False)
        self.single_rank = world == 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.single_rank:
            return F.embedding(tokens, self.weight)
        return super().forward(tokens)


# Which layer class carries out each kind of split; llama.layers.quantized supplies int8 linear classes.
LINEAR_CLASSES = {"column": ColumnParallelLinear, "row": RowParallelLinear}


def _parallel_layer(style: Style, child: Any, world: int, rank: int, linear_classes) -> nn.Module:
    if style.kind == "column":
        return linear_classes["column"](child.in_features, child.out_features, world, style.gather_output)
    if style.kind == "row":
        return linear_classes["row"](child.in_features, child.out_features, world)
    if style.kind == "embedding_dim":
        return ParallelEmbedding(child.num_embeddings, child.embedding_dim, world)
    return VocabParallelEmbedding(child.num_embeddings, child.embedding_dim, world, rank)


def parallelize(model: nn.Module, plan: Plan, world: int, rank: int, linear_classes=None) -> nn.Module:
    """Swap every planned, non-replicated module of `model` for its model-parallel layer (rank `rank`
    of `world`), in place; -> model. Build under `torch.device("meta")`: the new weights are empty.

    Done on one rank too: the swapped layers' one-rank path is the project's fast CPU matmul.
    """
    linear_classes = linear_classes or LINEAR_CLASSES
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            style = plan.get(name)
            if style is not None and style.dim is not None:
                setattr(parent, name, _parallel_layer(style, child, world, rank, linear_classes))
    return model
