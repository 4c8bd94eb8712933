"""The one rule for native or torch: whether the project's native CPU kernels run a layer.

Every place that picks a kernel asks `runs_native` (the float matmuls of llama.kernels.dense, the
int8/int4 layers of llama.layers.quantized at load time, the whole-step check of
llama.decoding.native_step); which of the native kernels suits how many rows is each caller's
speed rule, measured in BENCHMARKS.md.
"""

import torch

from . import native
from .formats import INT4_GROUP

NATIVE_FORMATS = ("int4", "int8", "bfloat16", "float32")


def runs_native(weight_format: str, device: torch.device, in_features: int) -> bool:
    """Whether the native kernels run a matmul whose weight is in `weight_format` (int4, int8,
    bfloat16, float32) with `in_features` inputs, on `device`: the library built and loaded here, a
    CPU tensor, and for the quantized formats whole groups of inputs."""
    if weight_format not in NATIVE_FORMATS or device.type != "cpu" or not native.available():
        return False
    return weight_format not in ("int4", "int8") or in_features % INT4_GROUP == 0


def format_of(dtype: torch.dtype) -> str:
    """A float weight's format name, as `runs_native` takes it."""
    return str(dtype).replace("torch.", "")
