"""llama.kernels.native: the project's own CPU kernels (llama/kernels/csrc: int8, int4, one-row
bfloat16), built at first use.

Each quantized kernel is checked against the exact arithmetic it stands for, written out in torch: the
activations rounded in groups of 32 (to 255 levels for int4 weights, to 2 * 127 * 128 + 1 for
int8 weights), times the dequantized weight."""

import logging

import pytest
import torch

from llama.kernels import dense as kernels
from llama.kernels import formats, native, repack
from llama.kernels.formats import quantize_int8
from llama.kernels.routing import runs_native

GEN = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=GEN)


def _quantized_activations(x: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """What the kernels multiply instead of x: each group of 32 rounded to one of 2 levels + 1
    values (int4: 127 levels, int8: 127 * 128)."""
    groups = x.reshape(*x.shape[:-1], -1, 32)
    scale = groups.abs().amax(-1, keepdim=True) / levels
    q = torch.round(groups / torch.where(scale > 0, scale, torch.ones_like(scale)))
    return (q * scale).reshape(x.shape)


def test_the_kernels_are_built_for_this_machine():
    assert native.available(), "the CI machine has cc and an AVX2 CPU: the native kernels must build"
    built = list(native.cache_dir().glob("llama-kernels-*.so"))
    assert built, native.cache_dir()


@pytest.mark.parametrize("rows, out_features", [(1, 64), (3, 40), (6, 13)])
def test_int4_kernel_equals_the_dequantized_matmul_of_quantized_activations(rows, out_features):
    w, x = _randn(out_features, 96), _randn(rows, 96)
    packed, scales = formats.quantize_int4(w, 32)
    expected = _quantized_activations(x) @ formats.dequantize_int4(packed, scales).T
    got = native.linear_int4_blocks(x, repack.int4_blocks(packed, scales), out_features)
    assert got.shape == (rows, out_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, out_features", [(1, 64), (5, 21)])
def test_int8_kernel_equals_the_dequantized_matmul_of_quantized_activations(rows, out_features):
    w, x = _randn(out_features, 64), _randn(rows, 64)
    q, scales = quantize_int8(w)
    expected = _quantized_activations(x, 127 * 128) @ (q.float() * scales[:, None]).T
    got = native.linear_int8_blocks(x, repack.int8_blocks(q), repack.pad_rows(scales), out_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_row_gives_the_same_bits_alone_and_in_any_batch():
    # Generation relies on it: a prompt decodes the same tokens alone and in a batch.
    w, x = _randn(24, 128), _randn(9, 128)
    packed, scales = formats.quantize_int4(w, 32)
    blocks = repack.int4_blocks(packed, scales)
    q, s = quantize_int8(w)
    b8, s8 = repack.int8_blocks(q), repack.pad_rows(s)
    batch4, batch8 = native.linear_int4_blocks(x, blocks, 24), native.linear_int8_blocks(x, b8, s8, 24)
    for i in range(9):
        assert torch.equal(native.linear_int4_blocks(x[i : i + 1], blocks, 24), batch4[i : i + 1])
        assert torch.equal(native.linear_int8_blocks(x[i : i + 1], b8, s8, 24), batch8[i : i + 1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_output_row_is_computed_once_whatever_the_threads_and_streams(threads):
    # One or two rows walk a thread's blocks as 4 or 2 side-by-side streams: 203 rows (26 blocks,
    # the last one partial) leave uneven streams and a tail on every thread count.
    n, k = 203, 64
    w, x = _randn(n, k), _randn(2, k)
    packed, scales = formats.quantize_int4(w, 32)
    q, s = quantize_int8(w)
    bf = w.bfloat16()
    expected4 = _quantized_activations(x) @ formats.dequantize_int4(packed, scales).T
    expected8 = _quantized_activations(x, 127 * 128) @ (q.float() * s[:, None]).T
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (1, 2):
            got4 = native.linear_int4_blocks(x[:rows], repack.int4_blocks(packed, scales), n)
            got8 = native.linear_int8_blocks(x[:rows], repack.int8_blocks(q), repack.pad_rows(s), n)
            gotbf = native.linear_bf16_rows(x[:rows].bfloat16(), bf)
            torch.testing.assert_close(got4, expected4[:rows], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got8, expected8[:rows], rtol=1e-5, atol=1e-5)
            # bfloat16: the float32 sums rounded once, so at most one bfloat16 step (2^-8 relative) apart
            exact = x[:rows].bfloat16().float() @ bf.float().T
            torch.testing.assert_close(gotbf.float(), exact, rtol=2**-8, atol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_bfloat16_activations_come_back_as_bfloat16():
    w, x = _randn(16, 64), _randn(2, 64).bfloat16()
    packed, scales = formats.quantize_int4(w, 32)
    got = native.linear_int4_blocks(x, repack.int4_blocks(packed, scales), 16)
    assert got.dtype == torch.bfloat16
    expected = _quantized_activations(x.float()) @ formats.dequantize_int4(packed, scales).T
    torch.testing.assert_close(got, expected.bfloat16())


@pytest.mark.parametrize("rows", [8, 13, 1031])  # whole blocks, and a last block of padding
def test_the_native_repacking_writes_the_bytes_of_the_tensor_form(rows):
    packed, scales = formats.quantize_int4(_randn(rows, 96), 32)
    assert torch.equal(native.repack_int4_blocks(packed, scales), repack.int4_blocks(packed, scales))
    q, _ = quantize_int8(_randn(rows, 96))
    assert torch.equal(native.repack_int8_blocks(q), repack.int8_blocks(q))


def test_int8_blocks_put_four_columns_of_eight_rows_in_each_32_bytes():
    q = torch.arange(8 * 32, dtype=torch.int32).reshape(8, 32) % 127  # row r, column c -> 32 r + c (mod 127)
    blocks = repack.int8_blocks(q.to(torch.int8))
    assert blocks.shape == (8, 32)
    blocks = blocks.reshape(8, 8, 4)  # quad, row, byte
    for quad, row, byte in ((0, 0, 0), (0, 1, 0), (2, 3, 1), (7, 7, 3)):
        assert blocks[quad, row, byte].item() == q[row, 4 * quad + byte].item()


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMA_CACHE_DIR", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def test_without_a_compiler_torchs_kernels_are_used_and_the_log_says_so(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh_build / "no-such-cc"))
    with caplog.at_level(logging.WARNING, logger="llama.kernels.native"):
        assert native.library() is None
    assert "building the native CPU kernels failed" in caplog.text
    assert not list(fresh_build.glob("*.so")) and not list(fresh_build.glob("*"))  # no half-written file


def test_llama_native_0_turns_them_off(fresh_build, monkeypatch):
    monkeypatch.setenv("LLAMA_NATIVE", "0")
    assert native.library() is None and not runs_native("int8", torch.device("cpu"), 64)


@pytest.mark.slow
def test_a_build_is_reused_and_named_after_source_compiler_and_cpu(fresh_build):
    assert native.library() is not None
    (built,) = fresh_build.glob("llama-kernels-*.so")
    mtime = built.stat().st_mtime_ns
    native.library.cache_clear()
    assert native.library() is not None and built.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("rows, k", [(1, 4096), (3, 200)])  # 200: a tail after the vector loop
def test_bfloat16_kernel_sums_in_float32_and_rounds_once(rows, k):
    w, x = _randn(24, k).bfloat16(), _randn(rows, k).bfloat16()
    got = native.linear_bf16_rows(x, w)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, 24)
    exact = x.double() @ w.double().T
    # float32 sums in another order than float64's: within one bfloat16 step of the exact value
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_one_row_bfloat16_linears_take_the_native_kernel_and_batches_and_prompts_do_not(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "linear_bf16_rows", lambda x, w: calls.append(x.shape) or x @ w.T)
    w = _randn(32, 64).bfloat16()
    kernels.linear(_randn(1, 1, 64).bfloat16(), w)
    kernels.linear(_randn(4, 1, 64).bfloat16(), w)  # a batch: torch's GEMM (AMX where the CPU has it)
    kernels.linear(_randn(1, 9, 64).bfloat16(), w)  # a prompt
    kernels.linear(_randn(1, 1, 64), w.float())  # float32: MKL or oneDNN
    assert calls == [(1, 1, 64)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_activation_gives_non_finite_results_not_garbage(bad):
    # Generation turns non-finite logits into an error naming the dtype; rounding must not hide them.
    w, x = _randn(16, 64), _randn(1, 64)
    x[0, 5] = bad
    packed, scales = formats.quantize_int4(w, 32)
    q, s = quantize_int8(w)
    assert not native.linear_int4_blocks(x, repack.int4_blocks(packed, scales), 16).isfinite().any()
    assert not native.linear_int8_blocks(x, repack.int8_blocks(q), repack.pad_rows(s), 16).isfinite().any()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_prompt_sized_float32_kernel_equals_the_float64_product(threads):
    # 5-64 rows; 203 weight rows (tiles of 4 plus a tail on every thread) and K = 100 (a tail after
    # the vector loop); every row and column must be computed once, in float32.
    w = _randn(203, 100)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for rows in (5, 7, 32, 64):
            x = _randn(rows, 100)
            got = native.linear_f32_tiles(x.reshape(1, rows, 100), w)
            assert got.dtype == torch.float32 and got.shape == (1, rows, 203)
            torch.testing.assert_close(got[0].double(), x.double() @ w.double().T, rtol=0, atol=1e-4)
    finally:
        torch.set_num_threads(before)


def test_small_float32_prompts_take_the_native_kernel_and_big_or_one_row_ones_do_not(monkeypatch):
    calls = []
    monkeypatch.setattr(native, "linear_f32_tiles", lambda x, w: calls.append(tuple(x.shape)) or x @ w.T)
    kernels.linear(_randn(1, 9, 64), _randn(32, 64))  # a prompt of a small model
    kernels.linear(_randn(2, 32, 2048), _randn(8, 2048))  # 64 rows, 2048 inputs: the largest it takes
    kernels.linear(_randn(1, 1, 64), _randn(32, 64))  # one row: MKL or oneDNN
    kernels.linear(_randn(1, 3, 64), _randn(32, 64))  # a small decode batch
    kernels.linear(_randn(1, 65, 64), _randn(32, 64))  # a longer prompt: oneDNN or MKL
    kernels.linear(_randn(1, 9, 4096), _randn(32, 4096))  # 7B-sized inputs: oneDNN blocks them better
    kernels.linear(_randn(1, 9, 64).bfloat16(), _randn(32, 64).bfloat16())
    assert calls == [(1, 9, 64), (2, 32, 2048)]
