"""Weight-only quantization (int8, int4): storage, error bounds, and closeness to the unquantized model."""

import pytest
import torch

from llama.errors import ConfigError
from llama.kernels.formats import quantize_int8
from llama.layers.quantized import (
    Int4ColumnParallelLinear,
    Int4RowParallelLinear,
    Int8ColumnParallelLinear,
    Int8RowParallelLinear,
)

PROMPTS = ["The quick brown fox", "Python is a programming language that", "A"]


def test_each_row_is_rounded_to_the_nearest_of_255_levels_of_its_own_scale():
    w = torch.tensor([[1.0, -0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [-3.0, 2.0, 1.0, 0.01]])
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and scales.dtype == w.dtype
    assert q.abs().max() == 127 and q[1].abs().max() == 0  # the largest entry of a row maps to +-127
    torch.testing.assert_close(scales, torch.tensor([1 / 127, 1.0, 3 / 127]))
    assert ((q.float() * scales[:, None] - w).abs() <= scales[:, None] / 2 + 1e-7).all()


def test_unknown_quantization_is_refused_before_loading(build):
    with pytest.raises(ConfigError, match=r"unknown quantization 'int3'; use one of int8, int4 \(or leave it unset\)"):
        build("mha", quantize="int3")


@pytest.mark.parametrize("config,n_shards", [("mha", 1), ("mha", 2), ("gqa", 1), ("gqa", 2)])
def test_int8_model_stays_close_to_the_float_model(build, config, n_shards):
    plain, int8 = build(config, n_shards), build(config, n_shards, quantize="int8")
    prompts = [plain.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    tokens, _ = plain.generate(prompts, max_gen_len=16, temperature=0, echo=True)
    q_tokens, _ = int8.generate(prompts, max_gen_len=16, temperature=0, echo=True)
    same = sum(a == b for r, s in zip(tokens, q_tokens) for a, b in zip(r, s))
    assert same >= 0.9 * sum(len(r) for r in tokens)
    for row in tokens:  # log p of the float model's tokens, scored by each model
        x = torch.tensor([row])
        lp = [torch.log_softmax(m.model.forward(x, 0)[0, :-1], -1).gather(-1, x[0, 1:, None]) for m in (plain, int8)]
        assert (lp[0] - lp[1]).abs().mean() < 0.05


def test_int8_layers_store_a_quarter_of_the_float32_bytes(build):
    plain, int8 = build("gqa"), build("gqa", quantize="int8")
    layers = [m for m in int8.model.modules() if isinstance(m, (Int8ColumnParallelLinear, Int8RowParallelLinear))]
    assert len(layers) == 2 * 7 + 1  # wq wk wv wo w1 w2 w3 per layer, and the output projection
    assert {m.weight.dtype for m in layers} == {torch.int8}
    int8_bytes = sum(m.weight.nbytes + m.scales.nbytes for m in layers)
    float_bytes = sum(
        t.nbytes
        for k, t in plain.model.state_dict().items()
        if k.endswith(".weight") and "norm" not in k and not k.startswith("tok_embeddings")
    )
    assert int8_bytes < 0.27 * float_bytes


def test_int4_layers_store_an_eighth_of_the_float32_bytes_plus_group_scales(build):
    plain, int4 = build("gqa"), build("gqa", quantize="int4")
    layers = [m for m in int4.model.modules() if isinstance(m, (Int4ColumnParallelLinear, Int4RowParallelLinear))]
    assert len(layers) == 2 * 7 + 1
    int4_bytes = sum(m.weight.nbytes + m.scales.nbytes for m in layers)
    float_bytes = sum(
        t.nbytes
        for k, t in plain.model.state_dict().items()
        if k.endswith(".weight") and "norm" not in k and not k.startswith("tok_embeddings")
    )
    assert int4_bytes == float_bytes // 8 + float_bytes // 4 // 32 * 2 * 2  # 4 bits, and a bf16 scale and zero per 32
