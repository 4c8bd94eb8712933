"""The quantized matmuls of llama.kernels_quant: the int4 storage format, and every fused kernel
checked against the plain dequantized matmul it stands for."""

import pytest
import torch
import torch.nn.functional as F

from llama.kernels import formats, native
from llama.kernels import torch_quant as kq
from llama.kernels.formats import quantize_int8
from llama.layers.quantized import Int4ColumnParallelLinear, Int8RowParallelLinear


def _weight(out_features=64, in_features=96, seed=0):
    return torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))


def test_nibbles_pack_two_weights_per_byte_even_column_low():
    q = torch.tensor([[1, 2, 15, 0], [7, 8, 9, 10]])
    packed = formats.pack_nibbles(q)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x21, 0x0F], [0x87, 0xA9]]
    assert torch.equal(formats.unpack_nibbles(packed), q.to(torch.uint8))


def test_int4_rounds_each_weight_to_the_nearest_of_16_levels_of_its_group():
    w = _weight()
    packed, scales = formats.quantize_int4(w, 32)
    assert packed.shape == (64, 48) and scales.shape == (64, 3, 2) and scales.dtype == torch.bfloat16
    dq = formats.dequantize_int4(packed, scales)
    step = scales[..., 0].float().repeat_interleave(32, dim=1)
    assert ((dq - w).abs() <= step / 2 + 1e-3 * w.abs().max()).all()  # half a level, plus bf16 rounding of zero
    # every group uses its full range: its smallest weight maps to 0 and its largest to 15
    q = formats.unpack_nibbles(packed).reshape(64, 3, 32)
    assert (q.amin(-1) == 0).all() and (q.amax(-1) == 15).all()


@pytest.mark.parametrize("rows", [1, 3, 7])
def test_cpu_int4_kernel_equals_the_dequantized_matmul(rows):
    w = _weight(out_features=48, in_features=128)
    packed, scales = formats.quantize_int4(w, 32)
    assert kq.int4_cpu_kernel_fits(packed)
    weight, scales_t = kq.int4_to_cpu_kernel(packed, scales)
    x = torch.randn(2, rows, 128)
    expected = F.linear(x.bfloat16().float(), formats.dequantize_int4(packed, scales))
    got = kq.int4_linear_cpu(x, weight, scales_t, 32)
    assert got.shape == (2, rows, 48) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.05 * expected.abs().mean().item())
    torch.testing.assert_close(
        kq.int4_linear_portable(x, packed, scales), F.linear(x, formats.dequantize_int4(packed, scales))
    )


def test_int8_fused_kernel_equals_the_portable_path():
    q, scales = quantize_int8(_weight())
    x = torch.randn(3, 96)
    expected = kq.int8_linear_portable(x.bfloat16().float(), q, scales.bfloat16().float())
    got = kq.int8_linear_fused(x, q, scales.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.02 * expected.abs().mean().item())


@pytest.fixture
def without_native(monkeypatch):
    """As on a machine where llama.native cannot be built (no compiler, LLAMA_NATIVE=0, not x86)."""
    monkeypatch.setattr(native, "available", lambda: False)


def _int4_layer(rows: int, in_features: int = 128):
    layer = Int4ColumnParallelLinear(in_features, rows)
    entries = layer.quantize(_weight(rows, in_features))
    layer.weight, layer.scales = entries["weight"], entries["scales"]
    return layer, F.linear(torch.ones(1, in_features), formats.dequantize_int4(layer.weight, layer.scales))


def test_layers_take_the_native_kernels_for_any_row_count():
    int8 = Int8RowParallelLinear(96, 64)
    int8.weight, int8.scales = quantize_int8(_weight())
    plain = F.linear(torch.ones(1, 96), int8.weight.float() * int8.scales[:, None])
    int8.prepare()
    assert int8.kernel == "native"
    torch.testing.assert_close(int8(torch.ones(1, 96)), plain, rtol=0.02, atol=0.05)
    for rows in (48, 40, 13):
        layer, plain = _int4_layer(rows)
        layer.prepare()
        assert layer.kernel == "native"
        torch.testing.assert_close(layer(torch.ones(1, 128)), plain, rtol=0.02, atol=0.05)


def test_without_native_kernels_layers_pick_torchs_and_fall_back_where_the_shape_does_not_fit(without_native):
    int8 = Int8RowParallelLinear(96, 64)
    int8.weight, int8.scales = quantize_int8(_weight())
    int8.prepare()
    assert int8.kernel == "torch" and int8.scales.dtype == torch.bfloat16
    for rows, expect in ((48, "torch"), (40, "portable")):  # the CPU int4 kernel needs rows in blocks of 16
        layer, plain = _int4_layer(rows)
        layer.prepare()
        assert layer.kernel == expect
        torch.testing.assert_close(layer(torch.ones(1, 128)), plain, rtol=0.02, atol=0.05)


def test_big_weights_convert_to_the_cpu_int4_layout_piece_by_piece():
    rows = kq.CONVERT_ROWS + 16  # two pieces, the second one block of rows
    packed, scales = formats.quantize_int4(_weight(rows, 64), 32)
    weight, scales_t = kq.int4_to_cpu_kernel(packed, scales)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(formats.unpack_nibbles(packed).to(torch.int32), 1)
    assert torch.equal(weight, whole)
