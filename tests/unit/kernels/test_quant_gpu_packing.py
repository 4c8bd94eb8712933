"""int4 on CUDA and MPS, checked on the CPU: the bytes handed to torch's GPU converter, the shape
rules that pick the GPU kernel, and a layer prepared for it on a fake CUDA device (torch's
FakeTensorMode runs the shape and dtype checks of `_convert_weight_to_int4pack` and
`_weight_int4pack_mm`, no arithmetic). Nothing here runs on a GPU."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from llama.kernels import formats
from llama.kernels import torch_quant as kq
from llama.layers.quantized import Int4ColumnParallelLinear


def test_gpu_bytes_hold_the_even_input_column_in_the_high_nibble():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)
    gpu = kq.to_gpu_nibbles(formats.pack_nibbles(q))
    assert gpu.shape == (8, 32) and gpu.dtype == torch.uint8
    for n in range(8):
        for j in range(32):
            assert int(gpu[n, j]) == int(q[n, 2 * j]) * 16 + int(q[n, 2 * j + 1]), (n, j)
    assert kq.to_gpu_nibbles(torch.tensor([[0x21, 0xF0, 0x0F]], dtype=torch.uint8)).tolist() == [[0x12, 0x0F, 0xF0]]


@pytest.fixture
def gpu_kernels(monkeypatch):
    """This torch build as if it had the CUDA and MPS int4 kernels, on an Ampere GPU."""
    monkeypatch.setattr(kq, "device_has_kernel", lambda op, device: torch.device(device).type in ("cuda", "mps"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))


@pytest.mark.parametrize(
    "out_features, in_features, device, fits",
    [
        (4096, 4096, "cuda:0", True),
        (11008, 4096, "cuda", True),
        (4096, 11008, "mps", True),
        (32, 32, "cuda", True),  # 32 input columns: two k-tiles packed together
        (4100, 4096, "cuda", False),  # rows not a multiple of 8
        (4096, 4096, "cpu", False),  # the CPU has its own int4 kernel
    ],
)
def test_the_gpu_kernel_is_chosen_where_torch_has_it_and_the_shape_fits(
    gpu_kernels, out_features, in_features, device, fits
):
    assert kq.int4_gpu_kernel_fits((out_features, in_features // 2), 32, torch.device(device)) is fits


def test_no_gpu_kernel_without_torch_s_kernels_or_before_ampere(monkeypatch, gpu_kernels):
    assert kq.int4_gpu_kernel_fits((64, 32), 32, torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not kq.int4_gpu_kernel_fits((64, 32), 32, torch.device("cuda"))
    assert kq.int4_gpu_kernel_fits((64, 32), 32, torch.device("mps"))
    monkeypatch.setattr(kq, "device_has_kernel", lambda op, device: op != "_convert_weight_to_int4pack")
    assert not kq.int4_gpu_kernel_fits((64, 32), 32, torch.device("mps"))


def test_inner_k_tiles_are_the_most_the_input_size_allows():
    assert [kq.int4_gpu_inner_k_tiles(k) for k in (4096, 11008, 4160, 96, 32, 48)] == [8, 8, 4, 2, 2, None]


def test_a_layer_on_a_gpu_prepares_torch_s_tiles_and_runs_their_kernel(gpu_kernels):
    with FakeTensorMode():
        layer = Int4ColumnParallelLinear(in_features=96, out_features=40)
        # As loading leaves it on a GPU (fake tensors are made there; moving one needs a CUDA build).
        layer._set_buffers(
            torch.empty(40, 96 // 2, dtype=torch.uint8, device="cuda"),
            torch.empty(40, 96 // 32, 2, dtype=torch.bfloat16, device="cuda"),
        )
        layer.prepare()
        y = layer.matmul(torch.empty(3, 5, 96, device="cuda"))
    assert layer.kernel == "gpu"
    # innerKTiles 2 (96 input columns), tiles of 8 rows; bfloat16 scales, (in // group, out, 2).
    assert (layer.weight.shape, layer.weight.dtype) == ((40 // 8, 96 // (2 * 16), 32, 1), torch.int32)
    assert (layer.scales.shape, layer.scales.dtype) == ((96 // 32, 40, 2), torch.bfloat16)
    assert (y.shape, y.dtype, y.device) == ((3, 5, 40), torch.float32, torch.device("cuda", 0))
