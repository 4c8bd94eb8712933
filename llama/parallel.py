"""fairscale's model-parallel layers, constructed without allocating or initialising weights.

fairscale's constructors build each full weight on the CPU and scatter it, which costs a
full-model allocation per rank and breaks under the meta device. These subclasses set the same
attributes and leave the weight `torch.empty`: under `torch.device("meta")` it costs nothing, and
loading assigns real tensors. Their forward runs fairscale's own collectives (the region
functions) around one `matmul`, which quantized variants (llama.quantize) replace.

With one model-parallel rank the region functions are identities that still cost tens of
microseconds each (autograd Function dispatch, process-group queries), hundreds of times per
decoded token, so the layers skip them: the result is the same tensor.
"""
import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel import layers
from fairscale.nn.model_parallel.initialize import get_model_parallel_world_size
from fairscale.nn.model_parallel.mappings import (
    copy_to_model_parallel_region,
    gather_from_model_parallel_region,
    reduce_from_model_parallel_region,
)
from torch import nn


# For 2..SMALL_BATCH_ROWS rows (a small decode batch) a linear layer runs as (W @ x.T).T, which
# MKL computes ~1.45x faster than F.linear's small-matrix GEMM (measured on the 2-core AMD EPYC of
# BENCHMARKS.md); from 8 rows on F.linear is as fast or faster.
SMALL_BATCH_ROWS = 4


ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN: at one row on the CPU it streams the weight ~1.5-2x faster than F.linear
    (MKL's GEMV); see BENCHMARKS.md."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


# The same as an operator of our own, so that torch.compile graphs call it as an opaque kernel
# (inductor would lower the mkldnn op only for frozen weights). A plain library operator costs
# ~3 us of dispatch; torch.library.custom_op's wrapper costs ~30 us, a tenth of a small GEMV.
_LIB = torch.library.Library("llama", "DEF")
_LIB.define("onednn_linear(Tensor x, Tensor weight) -> Tensor")
_LIB.impl("onednn_linear", _onednn, "CPU")
_LIB.impl("onednn_linear", lambda x, weight: x.new_empty(*x.shape[:-1], weight.shape[0]), "Meta")


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T for x (..., in_features); the result may be a transposed (non-contiguous) view."""
    rows = x.numel() // x.shape[-1]
    if rows == 1 and x.device.type == "cpu" and x.dtype == torch.float32 and ONEDNN:
        return torch.ops.llama.onednn_linear(x, weight) if torch.compiler.is_compiling() else _onednn(x, weight)
    if rows == 1 or rows > SMALL_BATCH_ROWS:
        return F.linear(x, weight)
    out = weight @ x.reshape(rows, x.shape[-1]).t()
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


def _local(size: int, what: str) -> int:
    world = get_model_parallel_world_size()
    if size % world:
        raise ValueError(f"{what}={size} is not divisible by the model-parallel size {world}")
    return size // world


class ColumnParallelLinear(layers.ColumnParallelLinear):
    """y = x W^T with W split along its output dim; gathers the full output if `gather_output`."""

    def __init__(self, in_features: int, out_features: int, gather_output: bool = True):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.gather_output = in_features, out_features, gather_output
        self.output_size_per_partition = _local(out_features, "out_features")
        self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, in_features), requires_grad=False)
        self.register_parameter("bias", None)
        self.master_weight = None
        self.single_rank = get_model_parallel_world_size() == 1

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.single_rank:
            return self.matmul(x)
        y = self.matmul(copy_to_model_parallel_region(x))
        return gather_from_model_parallel_region(y) if self.gather_output else y


class RowParallelLinear(layers.RowParallelLinear):
    """y = x W^T with W split along its input dim; the partial products are all-reduced."""

    def __init__(self, in_features: int, out_features: int):
        nn.Module.__init__(self)
        self.in_features, self.out_features, self.input_is_parallel = in_features, out_features, True
        self.input_size_per_partition = _local(in_features, "in_features")
        self.weight = nn.Parameter(torch.empty(out_features, self.input_size_per_partition), requires_grad=False)
        self.register_parameter("bias", None)
        self.master_weight = None
        self.single_rank = get_model_parallel_world_size() == 1

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matmul(x)  # x is already this rank's slice (input_is_parallel)
        return y if self.single_rank else reduce_from_model_parallel_region(y)


class ParallelEmbedding(layers.ParallelEmbedding):
    """Embedding with the embedding dim split across ranks; the slices are gathered."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = None, None, 2.0
        self.scale_grad_by_freq, self.sparse, self._weight = False, False, None
        self.embedding_dim_per_partition = _local(embedding_dim, "dim")
        self.weight = nn.Parameter(torch.empty(num_embeddings, self.embedding_dim_per_partition), requires_grad=False)
        self.single_rank = get_model_parallel_world_size() == 1

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.single_rank:
            return F.embedding(tokens, self.weight)
        return super().forward(tokens)
