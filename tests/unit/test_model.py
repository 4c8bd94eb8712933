"""The transformer math against Meta's `meta-llama/llama` `llama/model.py`: norms, rotary embedding, mask,
widths, cache."""

import pytest
import torch

from llama.model import (
    ModelArgs,
    RMSNorm,
    Transformer,
    apply_rope_scaling,
    apply_rotary_emb,
    causal_mask,
    rope_tables,
)
from llama.testing.reference import freqs_cis, rotate
from llama.testing.synthetic import tiny_args


def test_model_args_defaults_match_the_reference():
    a = ModelArgs()
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size) == (4096, 32, 32, None, -1)
    assert (a.multiple_of, a.ffn_dim_multiplier, a.norm_eps, a.rope_theta) == (256, None, 1e-5, 10000.0)
    assert (a.max_batch_size, a.max_seq_len) == (32, 2048)


@pytest.mark.parametrize(
    "dim,multiple_of,mult,hidden",
    [(4096, 256, None, 11008), (5120, 256, None, 13824), (8192, 4096, 1.3, 28672), (64, 32, 1.3, 224)],
)
def test_feed_forward_width_follows_llama_2_sizes(dim, multiple_of, mult, hidden):
    assert ModelArgs(dim=dim, multiple_of=multiple_of, ffn_dim_multiplier=mult).ffn_hidden_dim == hidden


def test_rmsnorm_is_computed_in_float32_and_cast_back():
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 16) * 100).half()
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    xf = x.float()
    expected = (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).half() * norm.weight
    out = norm(x)
    assert out.dtype == torch.float32  # half activations times a float32 weight, as in the reference
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("start", [0, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_real_rotary_equals_the_complex_adjacent_pair_rotation(start, dtype):
    torch.manual_seed(1)
    head_dim, seqlen = 16, 5
    x = torch.randn(2, seqlen, 3, head_dim).to(dtype)
    cos, sin = rope_tables(head_dim, 32, theta=10000.0)
    ours = apply_rotary_emb(x, cos[start : start + seqlen], sin[start : start + seqlen])
    ref = rotate(x, freqs_cis(head_dim, 32, 10000.0)[start : start + seqlen])
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_rotary_pairs_adjacent_elements_not_halves():
    # A vector (1, 0, 0, ...) at position 1 rotates into (cos 1, sin 1, 0, ...): its partner is x[1].
    cos, sin = rope_tables(8, 4)
    x = torch.zeros(1, 1, 1, 8)
    x[..., 0] = 1.0
    out = apply_rotary_emb(x, cos[1:2], sin[1:2]).flatten()
    torch.testing.assert_close(out[:2], torch.tensor([torch.cos(torch.tensor(1.0)), torch.sin(torch.tensor(1.0))]))
    assert out[2:].abs().max() == 0


def test_rope_tables_are_real_float32():
    cos, sin = rope_tables(64, 10, theta=500000.0)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == (10, 32)


def test_causal_mask_with_a_cache_offset():
    mask = causal_mask(3, 2, torch.float32, "cpu")
    inf = float("-inf")
    expected = torch.tensor([[0, 0, 0, inf, inf], [0, 0, 0, 0, inf], [0, 0, 0, 0, 0]])
    assert torch.equal(mask, expected)
    assert causal_mask(1, 9, torch.float32, "cpu") is None


@pytest.mark.parametrize("config", ["mha", "gqa"])
def test_incremental_decoding_with_the_cache_equals_one_full_pass(build, config):
    llama = build(config, max_seq_len=32, max_batch_size=2)
    tokens = torch.randint(3, llama.model.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    full = llama.model.forward(tokens, 0)
    steps = [llama.model.forward(tokens[:, :6], 0)]
    steps += [llama.model.forward(tokens[:, i : i + 1], i) for i in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert full.dtype == torch.float32


def test_the_plain_model_trains_and_its_training_forward_equals_cached_decoding():
    # No process group, no device, no file: nn.Linear / nn.Embedding, gradients flow.
    args = ModelArgs(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, multiple_of=16, max_seq_len=16, max_batch_size=1
    )
    torch.manual_seed(0)
    model = Transformer(args)
    assert isinstance(model.layers[0].attention.wq, torch.nn.Linear)
    tokens = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)  # training: no cache, full causal attention
    logits[0, -1, 3].backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        model.setup_caches()
        cached = torch.cat([model(tokens[:, :7], 0), model(tokens[:, 7:8], 7), model(tokens[:, 8:], 8)], dim=1)
    torch.testing.assert_close(cached, logits.detach(), rtol=1e-5, atol=1e-5)


def test_llama31_rope_scaling_keeps_high_frequencies_divides_low_ones_and_blends_between():
    inv_freq = torch.tensor([1.0, 2 * torch.pi / 4096, 2 * torch.pi / 1000.0, 2 * torch.pi / 20000.0])
    scaled = apply_rope_scaling(inv_freq, 8.0)
    assert scaled[0] == inv_freq[0] and scaled[2] == inv_freq[2]  # wavelength < 8192 / 4: unchanged
    assert scaled[3] == inv_freq[3] / 8  # wavelength > 8192: divided by the factor
    s = (8192 / 4096 - 1) / (4 - 1)  # in between: (1 - s) f / 8 + s f
    torch.testing.assert_close(scaled[1], (1 - s) * inv_freq[1] / 8 + s * inv_freq[1])
    assert ModelArgs(use_scaled_rope=True).rope_scaling == 8.0
    assert ModelArgs(use_scaled_rope=True, rope_scaling_factor=32.0).rope_scaling == 32.0
    assert ModelArgs(rope_scaling_factor=32.0).rope_scaling is None


def test_last_only_gives_the_last_positions_logits_of_the_whole_forward():
    # What decoding without log-probs asks for: the output layer runs on the last position only.
    model = Transformer(tiny_args("gqa"))
    model.setup_caches()
    tokens = torch.randint(0, model.params.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    full = model.forward(tokens, 0)
    model.setup_caches()
    last = model.forward(tokens, 0, last_only=True)
    assert last.shape == (2, 1, model.params.vocab_size)
    torch.testing.assert_close(last, full[:, -1:])
